/* Workload generator for the benchmarks: one operation in a loop, then prints the
 * average nanoseconds per operation and the total elapsed nanoseconds.
 *   load OPERATION ITERATIONS [RATE [CPU]]
 * OPERATION:
 *   getppid  the cheapest syscall (never captured);
 *   prctl    PR_GET_DUMPABLE with the caller's pid as argument (marks it for burst.bpf.c);
 *   openat   open this program's own file read-only, then close it;
 *   exec     fork, exec /bin/true, wait;
 *   tcp      connect to a listener of its own on 127.0.0.1, accept, close both ends;
 *   marker   as openat, but every MARKER_EVERY-th open is of /etc/shadow;
 *   needle   as openat, but the middle open of all ITERATIONS is of /etc/shadow;
 *   shadow   as openat, but every open is of /etc/shadow.
 * RATE: operations per second to pace at (0: as fast as possible).
 * CPU: pin to this CPU first (-1 or absent: leave as is).
 * Built static, so that it runs unchanged in a busybox container. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MARKER_EVERY 1000
#define MARKER "/etc/shadow"

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

static int listener(struct sockaddr_in *addr)
{
    socklen_t len = sizeof(*addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) || listen(fd, 128)
        || getsockname(fd, (struct sockaddr *)addr, &len))
        fail("listen on 127.0.0.1");
    return fd;
}

static void tcp_once(int server, struct sockaddr_in *addr)
{
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)addr, sizeof(*addr)))
        fail("connect");
    int accepted = accept(server, NULL, NULL);
    if (accepted < 0)
        fail("accept");
    /* The client closes last, so TIME_WAIT sits on its ephemeral port, not the listener's. */
    close(accepted);
    close(client);
}

static void exec_once(void)
{
    pid_t child = fork();
    if (child == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    if (child < 0 || waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
        fail("fork and exec /bin/true");
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: load getppid|prctl|openat|exec|tcp|marker|needle|shadow ITERATIONS [RATE [CPU]]\n");
        return 2;
    }
    const char *op = argv[1];
    long n = atol(argv[2]);
    double rate = argc > 3 ? atof(argv[3]) : 0;
    int cpu = argc > 4 ? atoi(argv[4]) : -1;
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set))
            fail("sched_setaffinity");
    }
    int kind = !strcmp(op, "getppid") ? 0 : !strcmp(op, "prctl") ? 1 : !strcmp(op, "openat") ? 2
             : !strcmp(op, "exec") ? 3 : !strcmp(op, "tcp") ? 4 : !strcmp(op, "marker") ? 5
             : !strcmp(op, "needle") ? 6 : !strcmp(op, "shadow") ? 7 : -1;
    if (kind < 0) {
        fprintf(stderr, "load: unknown operation %s\n", op);
        return 2;
    }
    struct sockaddr_in addr;
    int server = kind == 4 ? listener(&addr) : -1;
    long pid = getpid();
    long long start = now_ns();
    for (long i = 0; i < n; i++) {
        if (rate > 0 && (i & 255) == 0) {
            long long due = start + (long long)(i * 1e9 / rate);
            while (now_ns() < due)
                ;
        }
        switch (kind) {
        case 0:
            syscall(SYS_getppid);
            break;
        case 1:
            syscall(SYS_prctl, PR_GET_DUMPABLE, pid, 0, 0, 0);
            break;
        case 2:
        case 5:
        case 6:
        case 7: {
            int marked = kind == 5 ? i % MARKER_EVERY == MARKER_EVERY - 1 : kind == 6 ? i == n / 2 : kind == 7;
            const char *path = marked ? MARKER : argv[0];
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                fail(path);
            close(fd);
            break;
        }
        case 3:
            exec_once();
            break;
        case 4:
            tcp_once(server, &addr);
            break;
        }
    }
    long long elapsed = now_ns() - start;
    printf("%.3f %lld\n", (double)elapsed / n, elapsed);
    return 0;
}
