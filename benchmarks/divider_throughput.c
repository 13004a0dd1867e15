/* The divider's throughput for packed doubles: square roots and divisions of 256 and 512
 * bits, eight independent chains each (so the figure is the issue interval, not the
 * latency), in core cycles estimated from a chain of dependent integer additions (one
 * cycle each); and the latency of one 512-bit square root or division, from one chain
 * of that operation and a multiplication (a multiplication's ~3 cycles included).  Then
 * two mixes, all in registers: Adam's real quotient per vector (a root, a division by a
 * constant, + eps, a division), eight independent chains; and eight roots beside 64
 * independent multiplications and 64 additions, which shows whether the divider and the
 * multiply and add pipes work side by side (the time is then the roots' alone).  The
 * figures behind the divider counts of docs/balance_laws.md §8 and the count of
 * benchmarks/RESULTS.md.
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

/* keeps x in a register and the operation that formed it in place */
#define KEEP(x) __asm__ volatile("" : "+v"(x))

/* one round of the side-by-side mix: a root on one of the eight chains r0..r7, and
   eight multiplications on m0..m7 and eight additions on a0..a7 by kk (close to 1, so
   that nothing overflows or goes subnormal) */
#define ROOT_AND_PIPES(r)                                                           \
    do {                                                                            \
        r = _mm512_sqrt_pd(r);                                                      \
        KEEP(r);                                                                    \
        m0 = _mm512_mul_pd(m0, kk); m1 = _mm512_mul_pd(m1, kk);                       \
        m2 = _mm512_mul_pd(m2, kk); m3 = _mm512_mul_pd(m3, kk);                       \
        m4 = _mm512_mul_pd(m4, kk); m5 = _mm512_mul_pd(m5, kk);                       \
        m6 = _mm512_mul_pd(m6, kk); m7 = _mm512_mul_pd(m7, kk);                       \
        a0 = _mm512_add_pd(a0, kk); a1 = _mm512_add_pd(a1, kk);                       \
        a2 = _mm512_add_pd(a2, kk); a3 = _mm512_add_pd(a3, kk);                       \
        a4 = _mm512_add_pd(a4, kk); a5 = _mm512_add_pd(a5, kk);                       \
        a6 = _mm512_add_pd(a6, kk); a7 = _mm512_add_pd(a7, kk);                       \
        KEEP(m0); KEEP(m1); KEEP(m2); KEEP(m3); KEEP(m4); KEEP(m5); KEEP(m6);       \
        KEEP(m7); KEEP(a0); KEEP(a1); KEEP(a2); KEEP(a3); KEEP(a4); KEEP(a5);       \
        KEEP(a6); KEEP(a7);                                                         \
    } while (0)

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
    double best[10] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9}, sink = 0.0;
    for (int r = 0; r < 5; r++) {
        __m512d a[8];
        __m256d e[8];
        const __m512d b = _mm512_set1_pd(1.0000001);
        const __m256d b2 = _mm256_set1_pd(1.0000001);
        long z = 0;
        double t[10], t0;
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
        {                                       /* Adam's real quotient per vector */
            const __m512d c = _mm512_set1_pd(0.9995), eps = _mm512_set1_pd(1e-8);
            TIME8(t[7], a, _mm512_div_pd(b, _mm512_add_pd(_mm512_div_pd(
                                               _mm512_sqrt_pd(a[k]), c), eps)));
        }
        {                                       /* roots beside the pipes, and each alone */
            const __m512d kk = _mm512_set1_pd(0.9999999);
            __m512d r0 = a[0], r1 = a[1], r2 = a[2], r3 = a[3], r4 = a[4], r5 = a[5],
                    r6 = a[6], r7 = a[7];
            __m512d m0 = k2, m1 = k2, m2 = k2, m3 = k2, m4 = k2, m5 = k2, m6 = k2, m7 = k2;
            __m512d a0 = k2, a1 = k2, a2 = k2, a3 = k2, a4 = k2, a5 = k2, a6 = k2, a7 = k2;
            t0 = now();
            for (long i = 0; i < N / 8; i++) {
                ROOT_AND_PIPES(r0); ROOT_AND_PIPES(r1); ROOT_AND_PIPES(r2);
                ROOT_AND_PIPES(r3); ROOT_AND_PIPES(r4); ROOT_AND_PIPES(r5);
                ROOT_AND_PIPES(r6); ROOT_AND_PIPES(r7);
            }
            t[8] = (now() - t0) / (N / 8);      /* per round of 8 roots, 64 + 64 ops */
            t0 = now();
            for (long i = 0; i < N / 8; i++)
                for (int j = 0; j < 8; j++) {
                    m0 = _mm512_mul_pd(m0, kk); m1 = _mm512_mul_pd(m1, kk);
                    m2 = _mm512_mul_pd(m2, kk); m3 = _mm512_mul_pd(m3, kk);
                    m4 = _mm512_mul_pd(m4, kk); m5 = _mm512_mul_pd(m5, kk);
                    m6 = _mm512_mul_pd(m6, kk); m7 = _mm512_mul_pd(m7, kk);
                    a0 = _mm512_add_pd(a0, kk); a1 = _mm512_add_pd(a1, kk);
                    a2 = _mm512_add_pd(a2, kk); a3 = _mm512_add_pd(a3, kk);
                    a4 = _mm512_add_pd(a4, kk); a5 = _mm512_add_pd(a5, kk);
                    a6 = _mm512_add_pd(a6, kk); a7 = _mm512_add_pd(a7, kk);
                    KEEP(m0); KEEP(m1); KEEP(m2); KEEP(m3); KEEP(m4); KEEP(m5); KEEP(m6);
                    KEEP(m7); KEEP(a0); KEEP(a1); KEEP(a2); KEEP(a3); KEEP(a4); KEEP(a5);
                    KEEP(a6); KEEP(a7);
                }
            t[9] = (now() - t0) / (N / 8);      /* the 64 + 64 ops alone */
            __m512d acc = _mm512_add_pd(_mm512_add_pd(r0, r1), _mm512_add_pd(r2, r3));
            acc = _mm512_add_pd(acc, _mm512_add_pd(_mm512_add_pd(r4, r5), _mm512_add_pd(r6, r7)));
            acc = _mm512_add_pd(acc, _mm512_add_pd(_mm512_add_pd(m0, m7), _mm512_add_pd(a0, a7)));
            sink += acc[0];
        }
        for (int k = 0; k < 10; k++)
            if (t[k] < best[k]) best[k] = t[k];
        for (int k = 0; k < 8; k++) sink += a[k][0] + e[k][0];
        sink += (double) z;
    }
    printf("clock ~%.2f GHz; cycles per instruction: 512-bit sqrt %.1f, div %.1f; "
           "256-bit sqrt %.1f, div %.1f; latency + a multiplication (512-bit): "
           "sqrt %.1f, div %.1f   [%g]\n", 1e-9 / best[0], best[1] / best[0],
           best[2] / best[0], best[3] / best[0], best[4] / best[0], best[5] / best[0],
           best[6] / best[0], sink);
    printf("Adam's real quotient (root, / c, + eps, division): %.1f cycles per vector "
           "(the sum of its parts %.1f); 8 roots beside 64 multiplications and 64 "
           "additions: %.1f cycles (the roots alone %.1f, the 128 operations alone %.1f)\n",
           best[7] / best[0], (best[1] + 2.0 * best[2]) / best[0], best[8] / best[0],
           8.0 * best[1] / best[0], best[9] / best[0]);
    return 0;
}
