/* Register-tiled matrix products of the network potentials (pyx/potentials.pyx,
 * _c_grad_net; docs/potentials.md §10).
 *
 * Three products serve every layer, all row-major, all sums taken in a fixed order:
 *
 *   nc_net_fwd    Z[i,u]  = (s0 + s1) (+ bias[u]),  s0 = sum over even j, s1 over odd j of
 *                           In[i,j] W[u,j], each in j order from +0   (Wt = W transposed)
 *   nc_net_bwd_w  gW[u,j] = sum_i dZ[i,u] In[i,j], i in order from +0
 *   nc_net_bwd_x  dIn[i,j] = sum_u dZ[i,u] W[u,j], u in order from +0
 *
 * These are the orders of the scalar loops they replace, element for element: a tile only
 * computes several independent sums side by side (four rows, eight or four columns per
 * vector), it never splits or reorders one sum.  So the result does not depend on the
 * tile, the vector width or the instruction set, and every version below gives the same
 * bits (no FMA contraction: the project builds with -ffp-contract=off, and no fast-math).
 *
 * Why not BLAS: the demo network's products are (32 x 16)(16 x 32) at batch 32 and
 * (2048 x 16)(16 x 32) at full batch -- an inner dimension of 4 to 32, where a dgemm call
 * spends its time packing its operands; and a BLAS sums in an order that depends on the
 * CPU kernel it dispatches to, so scan points and train would agree only to round-off,
 * machine by machine.  There is no BLAS call here, hence no BLAS thread pool to keep
 * single-threaded inside the scan's own threads.
 *
 * The body is compiled twice, like pyx/lanes.h: for the build's baseline (SSE2 on x86-64;
 * the 8-wide vectors become four xmm operations) and, on x86-64 with GCC, for AVX-512F;
 * nc_net_set_isa picks one at import (the best this CPU runs).
 */
#ifndef NOETHER_NETMM_H
#define NOETHER_NETMM_H

#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* unaligned, aliasing-safe vectors of doubles (one IEEE operation per element) */
typedef double nc_m8 __attribute__((vector_size(64), aligned(8), may_alias));
typedef double nc_m4 __attribute__((vector_size(32), aligned(8), may_alias));
typedef double nc_m1 __attribute__((vector_size(8), aligned(8), may_alias));
/* their comparison masks (all-one / all-zero bits per element) */
typedef long long nc_l8 __attribute__((vector_size(64), aligned(8), may_alias));
typedef long long nc_l4 __attribute__((vector_size(32), aligned(8), may_alias));
typedef long long nc_l1 __attribute__((vector_size(8), aligned(8), may_alias));

#define NC_NET_ISA_BASE 0
#define NC_NET_ISA_AVX512 2

#define NCM(name) nc_net_##name##_base
#include "netmm_impl.h"
#undef NCM

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NC_NET_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f")
#define NCM(name) nc_net_##name##_avx512
#include "netmm_impl.h"
#undef NCM
#pragma GCC pop_options
#else
#define NC_NET_X86 0
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

typedef void (*nc_net_fwd_t)(const double*, Py_ssize_t, Py_ssize_t, const double*,
                             const double*, Py_ssize_t, double*);
typedef void (*nc_net_bwd_w_t)(const double*, const double*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, double*);
typedef void (*nc_net_bwd_x_t)(const double*, const double*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, double*);
typedef void (*nc_net_bn_fwd_t)(double*, double*, Py_ssize_t, Py_ssize_t, int, double,
                                double*, double*, int, const double*, const double*, int);
typedef void (*nc_net_bn_bwd_t)(double*, const double*, const double*, Py_ssize_t,
                                Py_ssize_t, int, int, int, const double*, double*, double*,
                                const double*, double*, double*);

static nc_net_fwd_t nc_net_fwd_p = nc_net_fwd_base;
static nc_net_bwd_w_t nc_net_bwd_w_p = nc_net_bwd_w_base;
static nc_net_bwd_x_t nc_net_bwd_x_p = nc_net_bwd_x_base;
static nc_net_bn_fwd_t nc_net_bn_fwd_p = nc_net_bn_act_fwd_base;
static nc_net_bn_bwd_t nc_net_bn_bwd_p = nc_net_bn_act_bwd_base;
static int nc_net_isa_cur = NC_NET_ISA_BASE;

/* the best version this build and CPU run */
static int nc_net_best_isa(void)
{
#if NC_NET_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return NC_NET_ISA_AVX512;
#endif
    return NC_NET_ISA_BASE;
}

/* select a version (-1: the best); returns the one now in use, or -1 if isa is not
 * available here (the selection is then unchanged).  Called with the GIL, while no
 * gradient runs (at import; the tests compare the versions). */
static int nc_net_set_isa(int isa)
{
    if (isa < 0) isa = nc_net_best_isa();
    if (isa == NC_NET_ISA_BASE) {
        nc_net_fwd_p = nc_net_fwd_base;
        nc_net_bwd_w_p = nc_net_bwd_w_base;
        nc_net_bwd_x_p = nc_net_bwd_x_base;
        nc_net_bn_fwd_p = nc_net_bn_act_fwd_base;
        nc_net_bn_bwd_p = nc_net_bn_act_bwd_base;
    }
#if NC_NET_X86
    else if (isa == NC_NET_ISA_AVX512 && nc_net_best_isa() == NC_NET_ISA_AVX512) {
        nc_net_fwd_p = nc_net_fwd_avx512;
        nc_net_bwd_w_p = nc_net_bwd_w_avx512;
        nc_net_bwd_x_p = nc_net_bwd_x_avx512;
        nc_net_bn_fwd_p = nc_net_bn_act_fwd_avx512;
        nc_net_bn_bwd_p = nc_net_bn_act_bwd_avx512;
    }
#endif
    else return -1;
    nc_net_isa_cur = isa;
    return isa;
}

static inline void nc_net_fwd(const double* In, Py_ssize_t B, Py_ssize_t n_in,
                              const double* Wt, const double* bias, Py_ssize_t n_out,
                              double* Z)
{
    nc_net_fwd_p(In, B, n_in, Wt, bias, n_out, Z);
}

static inline void nc_net_bwd_w(const double* dZ, const double* In, Py_ssize_t B,
                                Py_ssize_t n_in, Py_ssize_t n_out, double* gW)
{
    nc_net_bwd_w_p(dZ, In, B, n_in, n_out, gW);
}

static inline void nc_net_bwd_x(const double* dZ, const double* W, Py_ssize_t B,
                                Py_ssize_t n_in, Py_ssize_t n_out, double* dIn)
{
    nc_net_bwd_x_p(dZ, W, B, n_in, n_out, dIn);
}

static inline void nc_net_bn_act_fwd(double* Z, double* A, Py_ssize_t B, Py_ssize_t w,
                                     int bn, double eps, double* mean, double* sd,
                                     int affine, const double* gam, const double* bet,
                                     int relu)
{
    nc_net_bn_fwd_p(Z, A, B, w, bn, eps, mean, sd, affine, gam, bet, relu);
}

static inline void nc_net_bn_act_bwd(double* dA, const double* Zh, const double* A,
                                     Py_ssize_t B, Py_ssize_t w, int relu, int bn,
                                     int affine, const double* gam, double* dgam,
                                     double* dbet, const double* sd, double* m1,
                                     double* m2)
{
    nc_net_bn_bwd_p(dA, Zh, A, B, w, relu, bn, affine, gam, dgam, dbet, sd, m1, m2);
}

/* Wt[j, u] = W[u, j] (W: n_out x n_in, row-major), in blocks of eight rows of W: each
 * store is a run of eight contiguous doubles (a store to a new cache line per element,
 * the naive order, took half the time of the batch-32 forward pass) */
static void nc_net_transpose(const double* restrict W, Py_ssize_t n_out, Py_ssize_t n_in,
                             double* restrict Wt)
{
    Py_ssize_t u = 0, j, k;
    for (; u + 8 <= n_out; u += 8)
        for (j = 0; j < n_in; j++)
            for (k = 0; k < 8; k++) Wt[j * n_out + u + k] = W[(u + k) * n_in + j];
    for (j = 0; j < n_in; j++)
        for (k = u; k < n_out; k++) Wt[j * n_out + k] = W[k * n_in + j];
}

#endif
