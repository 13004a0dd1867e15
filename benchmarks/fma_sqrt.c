/* Can the free step's square roots leave the divider?  (docs/balance_laws.md §8, "Off the
 * divider, and other placements".)  Three measurements on packed doubles:
 *
 * 1. fma_sqrt8: a square root from the multiply pipes alone -- vrsqrt14pd's 14-bit
 *    estimate, two coupled Newton steps for sqrt(x) and 1/(2 sqrt(x)), one corrective
 *    step, then the exact rounding test of §8 -- checked bit for bit against the
 *    hardware's correctly rounded square root on random, near-midpoint and near-square
 *    inputs, and its throughput against vsqrtpd's.
 * 2. The same rounding test alone, fed the correct root and its two neighbours (so that
 *    the test, not the candidate's accuracy, is what is checked).
 * 3. Whether the divider and the multiply pipes overlap: twelve independent chains of
 *    multiplications per round, with and without one independent square root.
 *
 *     gcc -O2 -mavx512f benchmarks/fma_sqrt.c -o /tmp/fsq -lm && /tmp/fsq
 *
 * Needs AVX-512F.  Wall time, cycles at the clock of a chain of dependent integer
 * additions; exits 1 if any root differs from the hardware's. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* RN(sqrt(x)) from a candidate g within one unit in the last place of sqrt(x), every lane
 * normal with 2^-960 <= x <= 2^960: the residual r = x - g^2 (one rounding), u the spacing
 * above g, ud the spacing below it (u/2 when g is a power of two); round up iff r > g u,
 * down iff r <= -g ud (docs/balance_laws.md (8.7)). */
static inline __m512d round_sqrt8(__m512d x, __m512d g) {
    const __m512i gb = _mm512_castpd_si512(g);
    const __m512d p2e = _mm512_castsi512_pd(
        _mm512_and_si512(gb, _mm512_set1_epi64(0x7FF0000000000000LL)));
    const __m512d u = _mm512_mul_pd(p2e, _mm512_set1_pd(0x1p-52));
    const __mmask8 pow2 = _mm512_testn_epi64_mask(gb, _mm512_set1_epi64(0x000FFFFFFFFFFFFFLL));
    const __m512d ud = _mm512_mask_mul_pd(u, pow2, u, _mm512_set1_pd(0.5));
    const __m512d r = _mm512_fnmadd_pd(g, g, x);
    const __mmask8 up = _mm512_cmp_pd_mask(r, _mm512_mul_pd(g, u), _CMP_GT_OQ);
    const __mmask8 dn = _mm512_cmp_pd_mask(
        r, _mm512_mul_pd(g, _mm512_sub_pd(_mm512_setzero_pd(), ud)), _CMP_LE_OQ);
    g = _mm512_mask_add_pd(g, up, g, u);
    return _mm512_mask_sub_pd(g, dn, g, ud);
}

static inline __m512d fma_sqrt8(__m512d x) {
    const __m512d half = _mm512_set1_pd(0.5), y = _mm512_rsqrt14_pd(x);
    __m512d g = _mm512_mul_pd(x, y), h = _mm512_mul_pd(half, y), e;
    for (int k = 0; k < 2; ++k) {                /* relative error 2^-14 -> 2^-28 -> ~2^-53 */
        e = _mm512_fnmadd_pd(g, h, half);
        g = _mm512_fmadd_pd(g, e, g);
        h = _mm512_fmadd_pd(h, e, h);
    }
    g = _mm512_fmadd_pd(_mm512_fnmadd_pd(g, g, x), h, g);   /* within ~1/2 ulp */
    return round_sqrt8(x, g);
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* a test input: random over [2^-960, 2^960], near the square of a midpoint between two
 * doubles (the hardest to round), or next to an exact square */
static double draw(void) {
    const int mode = (int) (next() % 3);
    double x;
    if (mode == 0) {
        const uint64_t bits = ((uint64_t) (1023 - 960 + next() % 1921) << 52)
                              | (next() & 0x000FFFFFFFFFFFFFULL);
        memcpy(&x, &bits, 8);
    } else {
        const int e = (int) (next() % 900) - 450;
        const double a = ldexp((double) ((next() >> 12) | (1ULL << 52)), e - 52);
        if (mode == 1) {                         /* (a + ulp/2)^2, rounded, +- 3 ulps */
            const double ua = ldexp(1.0, e - 52), hi = a * a, lo = fma(a, a, -hi);
            x = hi + (lo + a * ua);
        } else {                                 /* a short a, whose square is exact */
            const double s = ldexp((double) ((next() >> 38) | 1), e);
            x = s * s;
        }
        for (int j = (int) (next() % 7) - 3; j != 0; j += j > 0 ? -1 : 1)
            x = nextafter(x, j > 0 ? INFINITY : 0.0);
    }
    return (x >= 0x1p-960 && x <= 0x1p960) ? x : 2.0;
}

#define OPS(OP, c)                                                                      \
    a[0] = OP(a[0], c); a[1] = OP(a[1], c); a[2] = OP(a[2], c); a[3] = OP(a[3], c);     \
    a[4] = OP(a[4], c); a[5] = OP(a[5], c); a[6] = OP(a[6], c); a[7] = OP(a[7], c);     \
    a[8] = OP(a[8], c); a[9] = OP(a[9], c); a[10] = OP(a[10], c); a[11] = OP(a[11], c);

int main(void) {
    /* 1 and 2: bit for bit against vsqrtpd */
    const long M = 4000000L;
    long bad = 0, bad_test = 0;
    double xs[8] __attribute__((aligned(64))), gs[8] __attribute__((aligned(64)));
    double o1[8] __attribute__((aligned(64))), o2[8] __attribute__((aligned(64)));
    for (long it = 0; it < M; ++it) {
        for (int l = 0; l < 8; ++l) {
            xs[l] = draw();
            const double r = sqrt(xs[l]);
            const int s = (int) (next() % 3) - 1;
            gs[l] = s == 0 ? r : nextafter(r, s > 0 ? INFINITY : 0.0);
        }
        const __m512d x = _mm512_load_pd(xs);
        _mm512_store_pd(o1, fma_sqrt8(x));
        _mm512_store_pd(o2, round_sqrt8(x, _mm512_load_pd(gs)));
        for (int l = 0; l < 8; ++l) {
            bad += o1[l] != sqrt(xs[l]);
            bad_test += o2[l] != sqrt(xs[l]);
        }
    }
    /* clock: a chain of dependent integer additions, one per cycle */
    const long N = 50000000L;
    double t0 = now();
    uint64_t z = 0;
    for (long i = 0; i < N; ++i) __asm__ volatile("add $1, %0" : "+r"(z));
    const double cyc = (now() - t0) / N;
    /* throughput: eight independent square roots per round, each fed from the last */
    __m512d v[8], acc = _mm512_setzero_pd();
    for (int k = 0; k < 8; ++k) v[k] = _mm512_set1_pd(1.5 + k);
    const long R = 10000000L;
    double best_hw = 1e9, best_fma = 1e9, best_mul = 1e9, best_mix = 1e9, best_one = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
        t0 = now();
        for (long i = 0; i < R; ++i)
            for (int k = 0; k < 8; ++k) {
                v[k] = _mm512_sqrt_pd(v[k]);
                __asm__ volatile("" : "+v"(v[k]));
                v[k] = _mm512_add_pd(v[k], _mm512_set1_pd(1.0));
            }
        best_hw = fmin(best_hw, (now() - t0) / (8.0 * R));
        t0 = now();
        for (long i = 0; i < R; ++i)
            for (int k = 0; k < 8; ++k) {
                v[k] = fma_sqrt8(v[k]);
                __asm__ volatile("" : "+v"(v[k]));
                v[k] = _mm512_add_pd(v[k], _mm512_set1_pd(1.0));
            }
        best_fma = fmin(best_fma, (now() - t0) / (8.0 * R));
        /* 3: overlap of the divider with the multiply pipes */
        __m512d a[12], c = _mm512_set1_pd(1.0000000001), s = _mm512_set1_pd(2.0);
        for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_pd(1.0 + k);
        t0 = now();
        for (long i = 0; i < 4 * R; ++i) { OPS(_mm512_mul_pd, c) }
        best_mul = fmin(best_mul, (now() - t0) / (4.0 * R));
        t0 = now();
        for (long i = 0; i < 4 * R; ++i) {
            OPS(_mm512_mul_pd, c)
            acc = _mm512_add_pd(acc, _mm512_sqrt_pd(s));
            s = _mm512_add_pd(s, c);
        }
        best_mix = fmin(best_mix, (now() - t0) / (4.0 * R));
        t0 = now();
        for (long i = 0; i < 4 * R; ++i) {
            acc = _mm512_add_pd(acc, _mm512_sqrt_pd(s));
            s = _mm512_add_pd(s, c);
        }
        best_one = fmin(best_one, (now() - t0) / (4.0 * R));
        for (int k = 0; k < 12; ++k) acc = _mm512_add_pd(acc, a[k]);
    }
    double sink = 0.0;
    for (int k = 0; k < 8; ++k) sink += v[k][0];
    printf("clock ~%.2f GHz\n", 1e-9 / cyc);
    printf("bit for bit against vsqrtpd, %ld inputs: fma_sqrt8 %ld differ, the rounding "
           "test alone (candidates RN, RN +- 1 ulp) %ld differ\n", 8 * M, bad, bad_test);
    printf("cycles per 512-bit root: vsqrtpd %.1f, fma_sqrt8 %.1f\n", best_hw / cyc,
           best_fma / cyc);
    printf("cycles per round: 12 multiplications %.1f, one square root %.1f, both %.1f"
           "   [%g %g]\n", best_mul / cyc, best_one / cyc, best_mix / cyc, sink, acc[0]);
    return (bad || bad_test) ? 1 : 0;
}
