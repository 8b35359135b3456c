/* What an intruder does, one step per run, for the rule tests (tests/e2e/test_falco_rules.py):
 *   attack ACTION [ARGS...]
 * Built with gcc -static by the container rig and run inside a runc container, under
 * whatever name the rule looks for (nginx, ssh, debugfs...). Each action waits 300 ms
 * first: what /proc says of a process (its capabilities) is read when the sensor
 * applies its exec: of a process gone by then it is not known. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int connect_to(const char *address, int port, int nonblocking)
{
    int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, address, &addr.sin_addr);
    connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: attack ACTION [ARGS...]\n");
        return 2;
    }
    const char *action = argv[1];
    usleep(300000);
    if (!strcmp(action, "spawn") && argc > 2) {          /* a child runs ARGS: a server spawning a shell */
        pid_t child = fork();
        if (child == 0) {
            execv(argv[2], argv + 2);
            _exit(127);
        }
        waitpid(child, NULL, 0);
    } else if (!strcmp(action, "tty") && argc > 2) {     /* ARGS with a terminal of their own */
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        grantpt(master);
        unlockpt(master);
        setsid();
        int slave = open(ptsname(master), O_RDWR);
        ioctl(slave, TIOCSCTTY, 0);
        dup2(slave, 0);
        dup2(slave, 1);
        dup2(slave, 2);
        execv(argv[2], argv + 2);
        return 127;
    } else if (!strcmp(action, "packet_socket")) {
        close(socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
    } else if (!strcmp(action, "ptrace_attach")) {
        pid_t child = fork();
        if (child == 0) {
            pause();
            _exit(0);
        }
        ptrace(PTRACE_ATTACH, child, 0, 0);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    } else if (!strcmp(action, "ptrace_traceme")) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
    } else if (!strcmp(action, "sleep_open") && argc > 3) {  /* a long-running process reads a file */
        sleep(atoi(argv[2]));
        close(open(argv[3], O_RDONLY));
    } else if (!strcmp(action, "connect") && argc > 3) {     /* ADDRESS PORT, not waiting for it */
        close(connect_to(argv[2], atoi(argv[3]), 1));
    } else if (!strcmp(action, "scan") && argc > 4) {        /* PREFIX COUNT PORT: PREFIX.1 .. PREFIX.COUNT */
        for (int i = 1; i <= atoi(argv[3]); i++) {
            char address[64];
            snprintf(address, sizeof(address), "%s.%d", argv[2], i);
            close(connect_to(address, atoi(argv[4]), 1));
        }
    } else if (!strcmp(action, "redirect") && argc > 2) {    /* a reverse shell's stdin and stdout */
        int fd = connect_to("127.0.0.1", atoi(argv[2]), 0);
        dup2(fd, 0);
        dup2(fd, 1);
    } else if (!strcmp(action, "memfd_exec") && argc > 3) {  /* SOURCE ARGS: a copy run from memory */
        int source = open(argv[2], O_RDONLY);
        struct stat st;
        fstat(source, &st);
        int fd = memfd_create("payload", 0);
        sendfile(fd, source, NULL, st.st_size);
        syscall(SYS_execveat, fd, "", argv + 3, environ, AT_EMPTY_PATH);
        return 127;
    } else if (!strcmp(action, "unshare")) {
        unshare(CLONE_NEWUTS);
    } else if (!strcmp(action, "bpf")) {
        syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, NULL, 0);
    } else if (!strcmp(action, "last_act") && argc > 2) {   /* PATH: a secret in the heap, PATH opened, gone */
        char *heap = malloc(64);
        snprintf(heap, 64, "last-act-%d-secret", 6 * 7);   /* in no file and no argument */
        open(argv[2], O_RDONLY);
        _exit(heap[0] == 'l' ? 0 : 1);
    } else if (!strcmp(action, "setuid0")) {
        setuid(0);
    } else if (!strcmp(action, "socket")) {
        close(socket(AF_INET, SOCK_DGRAM, 0));
    } else if (!strcmp(action, "init_module")) {
        syscall(SYS_init_module, "\177ELF", 4, "");
    } else {
        fprintf(stderr, "unknown action %s\n", action);
        return 2;
    }
    return 0;
}
