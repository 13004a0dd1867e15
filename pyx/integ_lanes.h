/* Integrator grids in SIMD lanes (docs/integrators.md §9): NCI_NL grid points of M1
 * (Damped) per block, one lane per point, stepped together by the conformal splittings
 * (Lie "conformal-euler", Strang "conformal-verlet", Yoshida's triple jump
 * "conformal-yoshida4") on the potentials with a lane form that the integrators can use
 * (Quadratic, RayleighQuotient).  Used by pyx/integrators.pyx (GridKernel).
 *
 * Every lane performs, operation for operation, what pyx/integrators.pyx's scalar
 * _fixed_loop does for its point (_m1_lie / _m1_strang / _split_step, _grad_V and the
 * potentials' _c_grad_* of pyx/potentials.pyx): the same IEEE operations in the same
 * order, no FMA contraction (-ffp-contract=off), no -ffast-math; the per-lane constants
 * (e^{-γτ}, τ/m) are computed by the caller with the same scalar expressions.  So every
 * lane is bitwise the scalar run; the tests compare them.
 *
 * The pattern (GCC vector types, the body compiled once for the build's baseline and
 * once for AVX-512F, picked at run time) is pyx/lanes.h's; this header is separate so
 * the two kernels evolve independently.
 */
#ifndef NOETHER_INTEG_LANES_H
#define NOETHER_INTEG_LANES_H

#include <math.h>
#include <string.h>
#include <stdlib.h>
#include "nc_status.h"

#define NCI_NL 8                /* lanes (grid points) per block */

typedef double nci_vd __attribute__((vector_size(NCI_NL * sizeof(double))));
typedef long long nci_vl __attribute__((vector_size(NCI_NL * sizeof(long long))));

enum { NCI_POT_QUADRATIC = 0, NCI_POT_RAYLEIGH = 1 };
enum { NCI_LIE = 0, NCI_STRANG = 1, NCI_YOSHIDA = 2, NCI_GD = 3, NCI_RK4 = 4 };
enum { NCI_M1 = 0, NCI_M4 = 1, NCI_M2 = 2 };
enum { NCI_ISA_BASE = 0, NCI_ISA_AVX512 = 2 };
enum { NCI_K_NONE = 0, NCI_K_ALL = 1, NCI_K_MIXED = 2 };   /* which lanes add k q */

typedef struct {
    int pot;                    /* NCI_POT_* */
    int model;                  /* NCI_M1 (y = (q, v)), NCI_M4 (y = q) or NCI_M2
                                   (y = (r, r', u, w), Eq. 13) */
    int scheme;                 /* NCI_LIE, NCI_STRANG, NCI_YOSHIDA (M1, M2), NCI_GD (M4's
                                   explicit Euler), NCI_RK4 (M1, M2, M4) */
    Py_ssize_t d;
    const double* A;            /* (d, d) */
    const double* b;            /* (d) quadratic */
    Py_ssize_t steps;           /* steps of every lane of the block */
    const int* cancel;          /* polled every 64 steps (non-zero: stop) */
    int isa;
} nci_ctx;

/* one block: per lane (index l) the constants of its substeps (Lie/Strang: 1, Yoshida:
 * 3, in the order taken): c[s][l] = e^{-γτ_s} (Strang: half step), a[s][l] = τ_s/m (Strang:
 * half; GD: h/μ), tau[s][l] = the drift's τ_s (RK4: h); m, mu, k per lane (RK4's right-hand
 * side); the state y[l] (n, IN/OUT), status, steps done.  Scratch: NCI_WORK(d) vectors,
 * 64-byte aligned.
 * M2 (_m2_lie / _m2_strang): c[s] = e^{-γτ} of D at the flows' step τ (Lie: h; Strang:
 * half the stage's step), a[s] = that τ itself (B's and A's step), tau[s] = C's step (the
 * stage's full step); A's radial oscillator per lane: om = sqrt(k/m), cs[s] = cos(om τ),
 * sn[s] = sin(om τ) (used in the lanes with k > 0); red = 1 for the reduced model; RK4's
 * right-hand side: gam = μ/m, km = k/m. */
#define NCI_WORK(d) (16 * (d) + 32)
typedef struct {
    double c[3][NCI_NL], a[3][NCI_NL], tau[3][NCI_NL], k[NCI_NL], m[NCI_NL], mu[NCI_NL];
    double cs[3][NCI_NL], sn[3][NCI_NL], om[NCI_NL], red[NCI_NL], gam[NCI_NL], km[NCI_NL];
    double* y[NCI_NL];
    int status[NCI_NL];
    Py_ssize_t done[NCI_NL];
    nci_vd* work;
} nci_block;

#define NCI_INLINE static inline __attribute__((always_inline))

#define NCIL(name) nci_##name##_base
#include "integ_lanes_impl.h"
#undef NCIL

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NCI_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f")
#define NCIL(name) nci_##name##_avx512
#include "integ_lanes_impl.h"
#undef NCIL
#pragma GCC pop_options
#else
#define NCI_X86 0
#endif

static inline int nci_best_isa(void)
{
#if NCI_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return NCI_ISA_AVX512;
#endif
    return NCI_ISA_BASE;
}

static inline void nci_run_block(const nci_ctx* c, nci_block* B)
{
#if NCI_X86
    if (c->isa == NCI_ISA_AVX512) { nci_run_block_avx512(c, B); return; }
#endif
    nci_run_block_base(c, B);
}

#endif
