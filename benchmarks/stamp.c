/* A container's entrypoint for the gate benchmark: prints CLOCK_MONOTONIC in ns (the
 * host's clock: containers share it) at its first instructions, then exits. Built static. */
#include <stdio.h>
#include <time.h>

int main(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    return 0;
}
