/* The divider's throughput for packed doubles: square roots and divisions of 256 and 512
 * bits, eight independent chains each (so the figure is the issue interval, not the
 * latency), in core cycles estimated from a chain of dependent integer additions (one
 * cycle each); and the latency of one 512-bit square root or division, from one chain
 * of that operation and a multiplication (a multiplication's ~3 cycles included).  The
 * figures behind the divider counts of docs/balance_laws.md §8.
 *
 *     gcc -O2 -mavx512f benchmarks/divider_throughput.c -o /tmp/divt && /tmp/divt
 *
 * Needs AVX-512F.  Wall time, the best of five runs. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define N 20000000L

/* seconds per instruction of N rounds of OP on the eight independent chains x[0..7] */
#define TIME8(out, x, OP)                                                           \
    do {                                                                            \
        const double t_ = now();                                                    \
        for (long i = 0; i < N; i++)                                                \
            for (int k = 0; k < 8; k++) {                                           \
                x[k] = OP;                                                          \
                __asm__ volatile("" : "+v"(x[k]));                                  \
            }                                                                       \
        out = (now() - t_) / (8.0 * N);                                             \
    } while (0)

int main(void) {
    double best[7] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9}, sink = 0.0;
    for (int r = 0; r < 5; r++) {
        __m512d a[8];
        __m256d e[8];
        const __m512d b = _mm512_set1_pd(1.0000001);
        const __m256d b2 = _mm256_set1_pd(1.0000001);
        long z = 0;
        double t[7], t0;
        const __m512d k = _mm512_set1_pd(1.7373737373737), k2 = _mm512_set1_pd(0.58123456789);
        __m512d u = _mm512_set1_pd(2.5), v = _mm512_set1_pd(3.5);
        for (int k = 0; k < 8; k++) {
            a[k] = _mm512_set1_pd(1.5 + k);
            e[k] = _mm256_set1_pd(1.5 + k);
        }
        t0 = now();
        for (long i = 0; i < N; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(z));
        t[0] = (now() - t0) / (4.0 * N);                      /* one cycle */
        TIME8(t[1], a, _mm512_sqrt_pd(a[k]));
        TIME8(t[2], a, _mm512_div_pd(b, a[k]));
        TIME8(t[3], e, _mm256_sqrt_pd(e[k]));
        TIME8(t[4], e, _mm256_div_pd(b2, e[k]));
        t0 = now();                             /* latency: sqrt then multiply, one chain */
        for (long i = 0; i < N; i++) {
            u = _mm512_mul_pd(_mm512_sqrt_pd(u), k);
            __asm__ volatile("" : "+v"(u));
        }
        t[5] = (now() - t0) / N;
        t0 = now();                             /* latency: divide then multiply */
        for (long i = 0; i < N; i++) {
            v = _mm512_mul_pd(_mm512_div_pd(k, v), k2);
            __asm__ volatile("" : "+v"(v));
        }
        t[6] = (now() - t0) / N;
        sink += u[0] + v[0];
        for (int k = 0; k < 7; k++)
            if (t[k] < best[k]) best[k] = t[k];
        for (int k = 0; k < 8; k++) sink += a[k][0] + e[k][0];
        sink += (double) z;
    }
    printf("clock ~%.2f GHz; cycles per instruction: 512-bit sqrt %.1f, div %.1f; "
           "256-bit sqrt %.1f, div %.1f; latency + a multiplication (512-bit): "
           "sqrt %.1f, div %.1f   [%g]\n", 1e-9 / best[0], best[1] / best[0],
           best[2] / best[0], best[3] / best[0], best[4] / best[0], best[5] / best[0],
           best[6] / best[0], sink);
    return 0;
}
