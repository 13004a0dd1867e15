/* The platform pow's cost per call, independent calls against calls that each wait for
 * the one before: the figures behind docs/balance_laws.md (9.9), which forms Adam's bias
 * correction 1 - beta2^(n+1) one step ahead so that the update does not wait for it.
 *
 *     gcc -O2 benchmarks/pow_latency.c -o /tmp/pow_latency -lm && /tmp/pow_latency
 *
 * CPU time of the process, ns per call (the best of five runs of 3e6 calls). */
#include <math.h>
#include <stdio.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
    volatile double beta = 0.999;        /* volatile: no constant folding */
    const long n = 3000000;
    double best_thr = 1e9, best_lat = 1e9, sink = 0.0;
    for (int r = 0; r < 5; r++) {
        double b = beta, s = 0.0, x = 0.0, t;
        t = cpu_now();
        for (long i = 1; i <= n; i++)    /* independent: the step counts are known */
            s += 1.0 - pow(b, (double)(i % 30000 + 1));
        t = cpu_now() - t;
        if (t < best_thr) best_thr = t;
        t = cpu_now();
        for (long i = 1; i <= n; i++)    /* chained: each base waits for the last result */
            x = pow(b + x * 1e-300, (double)(i % 30000 + 1));
        t = cpu_now() - t;
        if (t < best_lat) best_lat = t;
        sink += s + x;
    }
    printf("pow(0.999, n), n <= 30000: %.1f ns per independent call, %.1f ns per chained "
           "call (chain includes one multiply-add)   [%g]\n",
           best_thr / n * 1e9, best_lat / n * 1e9, sink);
    return 0;
}
