/* The arithmetic of one Adam (L2 decay) block-step of the lane kernel alone, d = 8, eight
 * lanes per 512-bit vector: the RayleighQuotient gradient (pyx/lanes_impl.h
 * grad_rayleigh) and the step (step_adam's real step), with charges off and with the
 * charged step's free work placed as the kernel places it (the free denominators after
 * the gradient's first four rows, the free numerators, pair quotients (8.3) and the sums
 * T, A_{n+1}, |Delta|^2 in the step's loop; docs/balance_laws.md §8).  No checks, no
 * law, no bookkeeping: what the kernel's cycle count would be without them.  And two
 * independent blocks advanced together, in turn by phase (one block's gradient, then the
 * other's step) and interleaved finely (one block's rows between the other's
 * coordinates), to see whether a second chain of work fills the divider.
 * Cycles per block-step, estimated from a chain of dependent integer additions; the best
 * of five runs.  benchmarks/RESULTS.md quotes the figures.
 *
 *     gcc -O3 -mavx512f -ffp-contract=off -fno-math-errno \
 *         benchmarks/adam_lane_harness.c -o /tmp/harness && /tmp/harness
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

typedef double vd __attribute__((vector_size(64)));
#define D 8

typedef struct {
    vd q[D], g[D], m1[D], m2[D], Aq[D], fden[D], qn[D];
    vd T, a1, dd;
} blk;

static double A[D * D];
static vd wd, w1, b2, omb2, eps, bc2s, ibc2s, nss, sink;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static inline vd vsqrt(vd x) { return (vd) _mm512_sqrt_pd((__m512d) x); }

/* (A q)_r for rows r0 .. r0 + 3, each summed in order */
static inline void rows4(const blk* b, int r0, vd* s)
{
    for (int r = r0; r < r0 + 4; ++r) {
        vd acc = A[r * D] * b->q[0];
        for (int j = 1; j < D; ++j) acc = acc + A[r * D + j] * b->q[j];
        s[r - r0] = acc;
    }
}

/* the free denominators of the charged step (formed after the first rows) */
static inline void free_dens(blk* b)
{
    for (int i = 0; i < D; ++i) {
        const vd wq = wd * b->q[i];
        b->fden[i] = vsqrt(b->m2[i] * b2 + (omb2 * wq) * wq) * ibc2s + eps;
    }
}

/* the gradient's pieces: |q|^2 (summed, or the charged step's A_{n+1}) and 1/|q|^2, then
   rows i0 .. i0 + 3, then g */
#define GRAD_HEAD(b, charged)                                                            \
    vd qq_##b = b->q[0] * b->q[0];                                                       \
    if (charged) qq_##b = b->a1;                                                         \
    else for (int i = 1; i < D; ++i) qq_##b = qq_##b + b->q[i] * b->q[i];               \
    const vd iqq_##b = 1.0 / qq_##b;                                                     \
    vd qAq_##b = {0};
#define GRAD_ROWS(b, i0, charged)                                                        \
    {                                                                                    \
        vd s[4];                                                                         \
        rows4(b, i0, s);                                                                 \
        for (int r = 0; r < 4; ++r) {                                                    \
            const int i = i0 + r;                                                        \
            qAq_##b = i == 0 ? b->q[0] * s[0] : qAq_##b + b->q[i] * s[r];                \
            b->Aq[i] = s[r] * iqq_##b;                                                   \
        }                                                                                \
        if ((charged) && i0 == 0) free_dens(b);                                          \
    }
#define GRAD_TAIL(b)                                                                     \
    {                                                                                    \
        const vd t = qAq_##b * iqq_##b, ti = t * iqq_##b;                                \
        for (int i = 0; i < D; ++i) b->g[i] = b->Aq[i] - b->q[i] * ti;                   \
    }

/* the real step of coordinate i (charges off) */
static inline void step_i(blk* b, int i)
{
    const vd qi = b->q[i], gi = b->g[i] + wd * qi, m1i = b->m1[i];
    const vd m1n = m1i + w1 * (gi - m1i), m2n = b->m2[i] * b2 + (omb2 * gi) * gi;
    const vd den = vsqrt(m2n) / bc2s + eps;
    b->m1[i] = m1n;
    b->m2[i] = m2n;
    b->q[i] = qi + (nss * m1n) / den;
}

/* the charged step of the pair i0, i0 + 1: real steps into qn, the free quotients in a
   pair, and the sums */
static inline void step_pair_charged(blk* b, int i0)
{
    vd num[2], qd[2];
    for (int k = 0; k < 2; ++k) {
        const int i = i0 + k;
        const vd qi = b->q[i], wq = wd * qi, gi = b->g[i] + wq, m1i = b->m1[i];
        const vd m1n = m1i + w1 * (gi - m1i), m2n = b->m2[i] * b2 + (omb2 * gi) * gi;
        qd[k] = qi;
        num[k] = nss * (m1i + w1 * (wq - m1i));
        const vd den = vsqrt(m2n) / bc2s + eps;
        b->m1[i] = m1n;
        b->m2[i] = m2n;
        const vd qo = qi + (nss * m1n) / den, x = qo - qi;
        b->qn[i] = qo;
        b->a1 = b->a1 + qo * qo;
        b->dd = b->dd + x * x;
    }
    const vd p = b->fden[i0] * b->fden[i0 + 1], ip = 1.0 / p;
    const vd f0 = num[0] * (b->fden[i0 + 1] * ip), f1 = num[1] * (b->fden[i0] * ip);
    b->T = b->T + ((qd[0] + f0) - qd[0]) * qd[0];
    b->T = b->T + ((qd[1] + f1) - qd[1]) * qd[1];
}

static inline void charged_begin(blk* b)
{
    const vd z = {0};
    b->T = z;
    b->a1 = z;
    b->dd = z;
}

static inline void charged_end(blk* b)
{
    for (int i = 0; i < D; ++i) b->q[i] = b->qn[i];
    sink = sink + (b->a1 - b->dd) - 2.0 * b->T;
}

#define FENCE() __asm__ volatile("" ::: "memory")

static __attribute__((noinline)) void one_off(blk* a, long n)
{
    for (long k = 0; k < n; ++k) {
        GRAD_HEAD(a, 0) GRAD_ROWS(a, 0, 0) GRAD_ROWS(a, 4, 0) GRAD_TAIL(a)
        for (int i = 0; i < D; ++i) step_i(a, i);
        FENCE();
    }
}

static __attribute__((noinline)) void phases_off(blk* a, blk* b, long n)
{
    { GRAD_HEAD(b, 0) GRAD_ROWS(b, 0, 0) GRAD_ROWS(b, 4, 0) GRAD_TAIL(b) }
    for (long k = 0; k < n; ++k) {
        { GRAD_HEAD(a, 0) GRAD_ROWS(a, 0, 0) GRAD_ROWS(a, 4, 0) GRAD_TAIL(a) }
        for (int i = 0; i < D; ++i) step_i(b, i);
        FENCE();
        { GRAD_HEAD(b, 0) GRAD_ROWS(b, 0, 0) GRAD_ROWS(b, 4, 0) GRAD_TAIL(b) }
        for (int i = 0; i < D; ++i) step_i(a, i);
        FENCE();
    }
}

static __attribute__((noinline)) void one_on(blk* a, long n)
{
    for (long k = 0; k < n; ++k) {
        GRAD_HEAD(a, 1) GRAD_ROWS(a, 0, 1) GRAD_ROWS(a, 4, 1) GRAD_TAIL(a)
        charged_begin(a);
        for (int i = 0; i < D; i += 2) step_pair_charged(a, i);
        charged_end(a);
        FENCE();
    }
}

/* a pair of coordinates' step, charged or not */
static inline void step_pair(blk* b, int i0, int charged)
{
    if (charged) {
        step_pair_charged(b, i0);
    } else {
        step_i(b, i0);
        step_i(b, i0 + 1);
    }
}

/* x's gradient, its rows between y's pairs of coordinates */
#define FINE(x, y, charged)                                                              \
    {                                                                                    \
        GRAD_HEAD(x, charged)                                                            \
        if (charged) charged_begin(y);                                                   \
        step_pair(y, 0, charged);                                                        \
        GRAD_ROWS(x, 0, charged)                                                         \
        step_pair(y, 2, charged);                                                        \
        step_pair(y, 4, charged);                                                        \
        GRAD_ROWS(x, 4, charged)                                                         \
        step_pair(y, 6, charged);                                                        \
        if (charged) charged_end(y);                                                     \
        GRAD_TAIL(x)                                                                     \
    }

/* two blocks interleaved finely, charged or not (a constant where inlined) */
static inline void fine(blk* a, blk* b, long n, const int charged)
{
    { GRAD_HEAD(b, charged) GRAD_ROWS(b, 0, charged) GRAD_ROWS(b, 4, charged) GRAD_TAIL(b) }
    for (long k = 0; k < n; ++k) {
        FINE(a, b, charged)
        FENCE();
        FINE(b, a, charged)
        FENCE();
    }
}

static __attribute__((noinline)) void fine_off(blk* a, blk* b, long n) { fine(a, b, n, 0); }

static __attribute__((noinline)) void fine_on(blk* a, blk* b, long n) { fine(a, b, n, 1); }

static void reset(blk* a, blk* b)
{
    for (int i = 0; i < D; ++i)
        for (int l = 0; l < 8; ++l) {
            a->q[i][l] = b->q[i][l] = 1.0 + 0.1 * i + 0.01 * l;
            a->m1[i][l] = b->m1[i][l] = 0.0;
            a->m2[i][l] = b->m2[i][l] = 1e-4;
        }
    const vd z = {0};
    a->a1 = b->a1 = z;
    for (int i = 0; i < D; ++i) {
        a->a1 = a->a1 + a->q[i] * a->q[i];
        b->a1 = b->a1 + b->q[i] * b->q[i];
    }
}

int main(void)
{
    for (int i = 0; i < D; ++i)
        for (int j = 0; j < D; ++j) A[i * D + j] = (i == j ? 1.0 + i : 0.0) + 0.01 * (i + j);
    const vd z = {0};
    wd = z + 1e-3; w1 = z + 0.1; b2 = z + 0.999; omb2 = z + 0.001; eps = z + 1e-8;
    bc2s = z + 0.5; ibc2s = 1.0 / bc2s; nss = z - 1e-3;
    static blk a, b;
    const long N = 1000000, S = 2000;    /* block-steps per timing; steps per run */
    double best[6] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9};
    long zz = 0;
    for (int r = 0; r < 5; ++r) {
        double t0 = now(), t[6];
        for (long i = 0; i < 20000000; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(zz));
        const double cyc = (now() - t0) / 8e7;
        /* runs of S steps from the same start, as a scan's points run (a long run would
           drift to numbers no scan sees); the resets are timed too, ~1 % */
#define RUNS(k, CALL)                                                                    \
        t0 = now();                                                                      \
        for (long m = 0; m < N / S; ++m) {                                               \
            reset(&a, &b);                                                               \
            CALL;                                                                        \
        }                                                                                \
        t[k] = (now() - t0) / N / cyc;
        RUNS(0, one_off(&a, S))
        RUNS(1, phases_off(&a, &b, S / 2))
        RUNS(2, fine_off(&a, &b, S / 2))
        RUNS(3, one_on(&a, S))
        RUNS(4, fine_on(&a, &b, S / 2))
        for (int k = 0; k < 5; ++k)
            if (t[k] < best[k]) best[k] = t[k];
    }
    printf("cycles per block-step, charges off: one block %.1f, two in turn by phase %.1f, "
           "two interleaved %.1f; charged: one block %.1f (%.2fx), two interleaved %.1f "
           "(%.2fx)   [%g %g]\n", best[0], best[1], best[2], best[3], best[3] / best[0],
           best[4], best[4] / best[2], a.q[0][0] + b.q[0][0], sink[0]);
    return 0;
}
