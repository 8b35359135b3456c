/* Load generator for the benchmarks: makes one syscall in a loop and prints the
 * nanoseconds each iteration took on average.
 *   load SYSCALL ITERATIONS [RATE]
 * SYSCALL: getppid (never captured) or prctl (captured when asked: PR_GET_DUMPABLE,
 * with the caller's pid as argument, which marks it for burst.bpf.c).
 * RATE: calls per second to pace at (0 or absent: as fast as possible). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: load getppid|prctl ITERATIONS [RATE]\n");
        return 2;
    }
    int use_prctl = !strcmp(argv[1], "prctl");
    long n = atol(argv[2]);
    double rate = argc > 3 ? atof(argv[3]) : 0;
    long pid = getpid();
    long long start = now_ns();
    for (long i = 0; i < n; i++) {
        if (rate > 0 && (i & 255) == 0) {
            long long due = start + (long long)(i * 1e9 / rate);
            while (now_ns() < due)
                ;
        }
        if (use_prctl)
            syscall(SYS_prctl, PR_GET_DUMPABLE, pid, 0, 0, 0);
        else
            syscall(SYS_getppid);
    }
    long long elapsed = now_ns() - start;
    printf("%.3f %lld\n", (double)elapsed / n, elapsed);
    return 0;
}
