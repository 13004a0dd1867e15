/* Lane-vectorised scan kernel (docs/scan.md §"Lanes"): NC_NL grid points per SIMD block.
 *
 * Used by pyx/scan.pyx (LaneScanKernel) for full-batch SGD, Adam/AdamW, RMSprop,
 * ScalarRMSProp and MirrorDescent scans
 * on the potentials that have a lane form (Quadratic, RayleighQuotient, BatchNormUnit),
 * with or without the scale-family balance laws.  Every lane is bitwise the scalar
 * run_loop of the same point.
 *
 * The body (lanes_impl.h) is compiled once per instruction set (and within it, the block's
 * run once per d <= 16 with d a constant, and once for any d) -- the build's baseline
 * (SSE2 on x86-64), and AVX-512F on x86-64 with GCC, where one nc_vd is one register --
 * and nc_lane_run_block picks one at run time.  (An AVX2 version was measured slower
 * than the baseline one: GCC lowers the 8-wide vectors into 4-wide halves with many
 * spills; docs/scan.md.)
 * Every version performs the same IEEE operations per lane (no FMA contraction: the
 * project builds with -ffp-contract=off, and no -ffast-math), so they agree bitwise; the
 * tests compare them.
 */
#ifndef NOETHER_LANES_H
#define NOETHER_LANES_H

#include <math.h>
#include <string.h>
#include <stdlib.h>
#include "nc_status.h"

#define NC_NL 8                 /* lanes (grid points) per block */
#define NC_TAB_C 4              /* chains of a shared draw table (NCL(fill_shared)) */

/* The NC_NL lanes as one GCC/Clang vector value: arithmetic on it is element-wise (one
 * IEEE operation per lane; the compiler maps it onto zmm, 2 ymm or 4 xmm registers as the
 * instruction set allows), a scalar operand is broadcast, and comparisons give masks of
 * all-one / all-zero bits.  Lane-fastest arrays (x[i * NC_NL + l]) are arrays of these. */
typedef double nc_vd __attribute__((vector_size(NC_NL * sizeof(double))));
typedef long long nc_vl __attribute__((vector_size(NC_NL * sizeof(long long))));

enum { NC_LPOT_QUADRATIC = 0, NC_LPOT_RAYLEIGH = 1, NC_LPOT_BN_UNIT = 2 };
/* the rules with a lane form (their step functions in lanes_impl.h) */
enum { NC_LRULE_SGD = 0, NC_LRULE_ADAM = 1, NC_LRULE_RMSPROP = 2, NC_LRULE_SRMS = 3,
       NC_LRULE_MIRROR = 4 };
enum { NC_ISA_BASE = 0, NC_ISA_AVX512 = 2 };
/* the free step's root in a block (lanes_impl.h NCL(free_root)) */
enum { NC_FREE_CARRIED = 0, NC_FREE_DIRECT = 1, NC_FREE_MIXED = 2 };
/* whose free denominators the gradient forms (nc_lane_ws.free_pre) */
enum { NC_PRE_NONE = 0, NC_PRE_RMSPROP = 1, NC_PRE_ADAM = 2 };

typedef struct {
    int pot;                    /* NC_LPOT_* */
    Py_ssize_t d;
    const double* A;            /* (d, d) quadratic / Rayleigh */
    const double* b;            /* (d) quadratic */
    const double* X;            /* (N, d) BatchNorm unit */
    const double* y;            /* (N) */
    Py_ssize_t N;
    double eps;
    const double* R;            /* (d, d) full-batch projection (docs/potentials.md 4a) */
    const double* t;            /* (d) */
    double rho2;                /*     or R = NULL: the row form */
    /* the grid: the rule's hyper-parameters and initial state per point, in the layout
       of pyx/rules.pyx's table (SGD: lr, momentum, dampening, nesterov, wd | momentum
       buffer | has_buffer; ADAM: lr, beta1, beta2, eps, wd, amsgrad, decoupled | exp_avg,
       exp_avg_sq, max_exp_avg_sq | step; RMSPROP: lr, alpha, eps, wd, momentum,
       centered | square_avg, momentum_buffer, grad_avg | step; SRMS (the paper's
       ScalarRMSProp): lr, rho, eps, G0 (NaN: the first |d_P|^2), wd, nproj | none |
       initialised, G per part; MIRROR: lr, wd, map (0 euclidean, 1 diagonal, 2 pnorm,
       3 entropy; per point), p | D (map 1 only) | none) */
    int rule;                   /* NC_LRULE_* */
    Py_ssize_t P;
    const double* hp;           /* (P, nhp) */
    Py_ssize_t nhp;
    const double* vec0;         /* (P, nvecd): the rule's buffers, d values each */
    Py_ssize_t nvecd;
    const double* sca0;         /* (P, nsca) */
    Py_ssize_t nsca;
    /* Adam's bias corrections: powtab[pow_row[2p + k] * pow_len + n] = pow(beta_{k+1},
       s0 + n + 1) of point p (s0: its initial step count), by libm's pow as
       rules.pyx _step_adam forms them, tabled once per distinct (beta, s0), for
       n < pow_len; from pow_len on every row's pow is exactly 0 (beta^step underflowed;
       pow is monotone in the step), so the table stops there */
    const double* powtab;
    const Py_ssize_t* pow_row;  /* (P, 2) */
    Py_ssize_t pow_len;
    /* ScalarRMSProp's partition of q into parts with their own G (CSR, the same for
       every point) */
    Py_ssize_t npart;
    const Py_ssize_t* pptr;
    const Py_ssize_t* pidx;
    const double* q0;           /* (d) */
    Py_ssize_t steps;
    Py_ssize_t late_start;
    const Py_ssize_t* bptr;     /* named blocks (CSR) */
    const Py_ssize_t* bidx;
    Py_ssize_t nb;
    Py_ssize_t nsym;            /* scale-family balance laws tracked (0: off) */
    const Py_ssize_t* sptr;     /* their blocks (CSR) */
    const Py_ssize_t* sidx;
    /* outputs, one row per point */
    double* q_final; double* loss_final; double* loss_min; double* bn2_final; double* angle;
    Py_ssize_t* status; Py_ssize_t* stop;
    double* worst; Py_ssize_t* worst_step;
    /* recorded series (rec_every = 0: none): rows r = n / rec_every of state n,
       rec_rows per point, NaN where not reached (the caller fills them) */
    Py_ssize_t rec_every, rec_rows;
    double* s_q; double* s_loss; double* s_g2; double* s_bn2; Py_ssize_t* n_rows;
    const int* cancel;
    int isa;                    /* NC_ISA_*: which compiled version runs */
    /* minibatch lanes (docs/scan.md "Minibatch lanes"; batch = 0: full batch): each point
       draws `batch` distinct rows of the N per step from its own PCG64 stream, whose
       starting state is rng0[4p .. 4p + 3] = (state >> 64, state mod 2^64, inc >> 64,
       inc mod 2^64), NumPy's PCG64 state of the point's generator (_scan.py _run_lanes) */
    Py_ssize_t batch;
    const unsigned long long* rng0;
    Py_ssize_t poll_mask;       /* the cancel flag is read when (n & poll_mask) == 0 */
    /* the order of the tasks in blocks (docs/scan.md "Minibatch lanes", seed streams):
       slot k of the grid's blocks (block b: slots 8b .. 8b + 7) runs task slot_task[k]
       (-1: a padding lane, a copy of its block's first slot, which is a task), over
       nslots slots; slot_task = NULL: slot k is task k (k < P), nslots = P */
    const Py_ssize_t* slot_task;
    Py_ssize_t nslots;
    /* a block whose lanes all start from one PCG64 stream (batch_streams="seed") draws
       each step's batch once, tab_T steps at a time (a multiple of NC_TAB_C: that many
       interleaved chains, each tab_T / NC_TAB_C steps of the stream) */
    Py_ssize_t tab_T;
    /* or, when the whole run's draws are small enough, drawn once per stream for every
       block before the blocks run (nc_lane_draw_rows): the rows of step n of stream k at
       rows_tab[(k steps + n) batch ..], task p on stream task_stream[p] (NULL: none) */
    const unsigned int* rows_tab;
    const Py_ssize_t* task_stream;
    /* batch_form="moments" (docs/scan.md "Batch moments"; NULL: the row form): step n of
       stream k reads its batch's centred moments, mom_len = d d + d + 1 doubles (C row by
       row, c, m; docs/potentials.md 4b), at mom_tab[(k steps + n) mom_len ..] */
    const double* mom_tab;
    Py_ssize_t mom_len;
} nc_lane_ctx;

typedef struct {
    /* per-lane hyper-parameters (nlr = -lr) and flags (masks: all ones = true) */
    nc_vd nlr, mom, damp1, wd;
    nc_vl wd_on, mom_on, nest, first;
    /* Adam (lr, 1 - beta1 = the lerp weight w1 and 1 - w1, beta2, 1 - beta2, eps,
       1 - lr wd) and RMSprop (alpha, 1 - alpha, its lerp weight and 1 - that, eps) */
    nc_vd lr, w1, omw1, b2, omb2, eps, decay;
    nc_vl coup, decp, lo, ams, cen;
    const double* pw1[NC_NL];   /* Adam: this lane's rows of powtab */
    const double* pw2[NC_NL];
    int lo_all, ams_any, cen_any, mom_all, mom_none;   /* block-uniform flags */
    int form_coup, form_wd;     /* NCL(free_form) of coup (Adam) and wd_on (RMSprop) */
    /* ScalarRMSProp: 1 - rho, G0 (NaN: from the first step), parts projected */
    nc_vd omrho, G0, nproj;
    double* G;                  /* npart: G per part */
    /* MirrorDescent (buf: D, v1/v2: the step's d and free d): map per lane, p - 1 and
       1/(p - 1) as the scalar step forms them, lanes with map 1, block-uniform flags */
    nc_vd mpm1, mipm1;
    nc_vl mdiag;
    int mkind[NC_NL];
    int m_diag_any, m_nl_any;   /* some lane: diagonal; some lane: pnorm or entropy */
    nc_vd f, loss_min;
    int alive[NC_NL];
    Py_ssize_t n_rows[NC_NL];   /* recorded rows so far, per lane */
    int heavy_ball, all_wd;     /* block-uniform flags (step_sgd's fast form) */
    int any_first;              /* some lane has not taken its first momentum step */
    int sym_all;                /* one tracked law, on coordinates 0 .. d - 1 in order */
    /* the fused charge sums of the step just taken (sym_all, SGD / Adam / RMSprop:
       lanes_impl.h NCL(step_with_free)): A_{n+1} = |q_{n+1}|^2 and |Delta|^2, summed in
       the step's loop (T_n goes to free_T[0]) */
    nc_vd fz_a1, fz_dd;
    Py_ssize_t ang_cnt;
    Py_ssize_t progress;        /* point-steps done (read by the progress bar) */
    /* lane-fastest arrays carved from one aligned block (nc_lane_ws_carve) */
    double *q, *qn, *buf, *g, *aux, *q_free;                  /* d (aux: max(2d, N)) */
    double *v1, *v2;            /* the rule's second and third buffers (buf: the first) */
    /* the free step's pieces, kept by RMSprop's step pass for its second pass
       (lanes_impl.h NCL(step_rmsprop)): numerators and denominators; f_den also holds
       the denominators that NCL(free_dens) forms during the gradient */
    double *f_num, *f_den;                                         /* d */
    /* the step's free denominators formed during its gradient (lanes_impl.h
       NCL(free_dens), docs/balance_laws.md §8, "During the gradient"): NC_PRE_RMSPROP
       or NC_PRE_ADAM for that step, else NC_PRE_NONE; Adam's -step_size, sqrt(bc2) and
       its reciprocal of that step, formed before that gradient */
    int free_pre;
    nc_vd pre_nss, pre_bc2s, pre_ibc2s;
    nc_vd sroot;                /* sqrt(beta2) (Adam), sqrt(alpha) (RMSprop) per lane */
    double *ang_sum;                                               /* nb */
    /* late-window squared chords, batched (lanes_impl.h NCL(angle_flush)): up to ang_K states
       wait in ang_q; their transitions are evaluated together, then added in step order */
    int ang_K, ang_np;          /* capacity; states pending */
    int ang_prev;               /* ang_v's first row holds the state before them */
    double *ang_q;                                                 /* ang_K * d */
    double *ang_v;              /* (ang_K + 1) * nnz: q_B/|q_B| per block entry */
    double *ang_inv, *ang_m;                                       /* ang_K * nb */
    double *free_T, *worst, *a_prev;                               /* nsym */
    double *worstp;             /* nsym: the scale laws' screen factor of worst
                                   (lanes_impl.h NCL(worstp), docs/scan.md (S.1)) */
    Py_ssize_t* wstep;                                             /* nsym */
    /* minibatch lanes: each lane's PCG64 state and increment, its permutation of the
       rows (the identity between draws: lanes_impl.h NCL(draw_batch) undoes its swaps),
       the swap partners of the current draw, and the drawn rows gathered lane-fastest:
       xb[(k d + j) NC_NL + l] = X[row_k of lane l, j], yb[k NC_NL + l] = y[row_k] */
    unsigned __int128 rng_s[NC_NL], rng_inc[NC_NL];
    unsigned int* perm;                                            /* NC_NL * N */
    unsigned int* swp;                                             /* batch * NC_NL */
    double *xb, *yb;                                               /* batch * d, batch */
    /* shared draws (every lane on one stream: NCL(draw_shared)): the stream, its jump
       by tab_T / tab_C steps' draws, the drawn swap partners of tab_T steps (row t:
       step t of the table) and the rows of the current step */
    int shared;
    unsigned __int128 sh_s, sh_inc, jmp_m, jmp_c;
    unsigned int* jtab;                                            /* tab_T * batch */
    const unsigned int* rows_cur;  /* or this block's stream's rows (ctx.rows_tab) */
    const double* mom_cur;         /* or this step's moments (ctx.mom_tab) */
    Py_ssize_t tab_pos, tab_len, drawn;    /* next row, rows filled, steps drawn */
    void* block;
} nc_lane_ws;

static inline size_t nc_lane_pad(size_t nbytes) { return (nbytes + 63) / 64 * 64; }

/* states per angle batch: 8, fewer where d is large (K = min(8, 256 / d), at least 1:
   the queue holds K d <= 256 vectors of NC_NL doubles, 16 KiB, for d <= 256, and one
   state of 64 B * d beyond) */
static inline int nc_lane_ang_K(const nc_lane_ctx* c)
{
    const Py_ssize_t k = 256 / (c->d > 0 ? c->d : 1);
    return k >= 8 ? 8 : (k < 1 ? 1 : (int) k);
}

/* entries of the named blocks (a coordinate in two blocks counts twice) */
static inline size_t nc_lane_nnz(const nc_lane_ctx* c)
{
    return c->nb > 0 ? (size_t) c->bptr[c->nb] : 0;
}

/* bytes of the lane arrays of one workspace */
static inline size_t nc_lane_ws_bytes(const nc_lane_ctx* c)
{
    size_t L = NC_NL * sizeof(double), na = (size_t) (c->N > 2 * c->d ? c->N : 2 * c->d);
    size_t nb = (size_t) (c->nb > 0 ? c->nb : 1), ns = (size_t) (c->nsym > 0 ? c->nsym : 1);
    size_t K = (size_t) nc_lane_ang_K(c);
    size_t np = (size_t) (c->npart > 0 ? c->npart : 1);
    size_t Bm = (size_t) (c->batch > 0 ? c->batch : 0);
    size_t mb = c->batch > 0 ? nc_lane_pad((size_t) c->N * NC_NL * sizeof(unsigned int))
                               + nc_lane_pad(Bm * NC_NL * sizeof(unsigned int))
                               + nc_lane_pad(Bm * c->d * L) + nc_lane_pad(Bm * L)
                               + nc_lane_pad((size_t) c->tab_T * Bm * sizeof(unsigned int))
                             : 0;
    return mb + 9 * nc_lane_pad(c->d * L) + nc_lane_pad(na * L) + nc_lane_pad(nb * L)
           + nc_lane_pad(np * L)
           + 5 * nc_lane_pad(ns * L) + nc_lane_pad(K * c->d * L)
           + nc_lane_pad((K + 1) * nc_lane_nnz(c) * L) + 2 * nc_lane_pad(K * nb * L);
}

static inline void nc_lane_ws_carve(const nc_lane_ctx* c, nc_lane_ws* w, void* block)
{
    size_t L = NC_NL * sizeof(double), na = (size_t) (c->N > 2 * c->d ? c->N : 2 * c->d);
    size_t nb = (size_t) (c->nb > 0 ? c->nb : 1), ns = (size_t) (c->nsym > 0 ? c->nsym : 1);
    char* p = (char*) block;
    w->block = block;
    w->q = (double*) p; p += nc_lane_pad(c->d * L);
    w->buf = (double*) p; p += nc_lane_pad(c->d * L);
    w->g = (double*) p; p += nc_lane_pad(c->d * L);
    w->qn = (double*) p; p += nc_lane_pad(c->d * L);
    w->q_free = (double*) p; p += nc_lane_pad(c->d * L);
    w->v1 = (double*) p; p += nc_lane_pad(c->d * L);
    w->v2 = (double*) p; p += nc_lane_pad(c->d * L);
    w->f_num = (double*) p; p += nc_lane_pad(c->d * L);
    w->f_den = (double*) p; p += nc_lane_pad(c->d * L);
    w->G = (double*) p; p += nc_lane_pad((size_t) (c->npart > 0 ? c->npart : 1) * L);
    w->aux = (double*) p; p += nc_lane_pad(na * L);
    w->ang_K = nc_lane_ang_K(c);
    w->ang_q = (double*) p; p += nc_lane_pad((size_t) w->ang_K * c->d * L);
    w->ang_v = (double*) p; p += nc_lane_pad((size_t) (w->ang_K + 1) * nc_lane_nnz(c) * L);
    w->ang_inv = (double*) p; p += nc_lane_pad((size_t) w->ang_K * nb * L);
    w->ang_m = (double*) p; p += nc_lane_pad((size_t) w->ang_K * nb * L);
    w->ang_sum = (double*) p; p += nc_lane_pad(nb * L);
    w->free_T = (double*) p; p += nc_lane_pad(ns * L);
    w->worst = (double*) p; p += nc_lane_pad(ns * L);
    w->a_prev = (double*) p; p += nc_lane_pad(ns * L);
    w->worstp = (double*) p; p += nc_lane_pad(ns * L);
    w->wstep = (Py_ssize_t*) p; p += nc_lane_pad(ns * sizeof(Py_ssize_t) * NC_NL);
    w->perm = NULL; w->swp = NULL; w->xb = NULL; w->yb = NULL; w->jtab = NULL;
    if (c->batch > 0) {             /* minibatch lanes: every lane's permutation starts as
                                       the identity (and stays it between draws) */
        const size_t Bm = (size_t) c->batch;
        w->perm = (unsigned int*) p;
        p += nc_lane_pad((size_t) c->N * NC_NL * sizeof(unsigned int));
        w->swp = (unsigned int*) p; p += nc_lane_pad(Bm * NC_NL * sizeof(unsigned int));
        w->xb = (double*) p; p += nc_lane_pad(Bm * c->d * L);
        w->yb = (double*) p; p += nc_lane_pad(Bm * L);
        w->jtab = (unsigned int*) p;
        for (int l = 0; l < NC_NL; ++l)
            for (Py_ssize_t i = 0; i < c->N; ++i) w->perm[l * c->N + i] = (unsigned int) i;
    }
}

/* NumPy's PCG64 (PCG XSL-RR 128/64, numpy/random/src/pcg64/pcg64.h): the state
 * advances by one LCG step, s <- s M + inc (mod 2^128), and the output is the new state's
 * two halves xor-ed and rotated right by its top 6 bits.  next_double is NumPy's
 * (next64 >> 11) * 2^-53.  Integer arithmetic only, so the same draws on every build; the
 * tests compare whole minibatch runs with train(), which draws through NumPy's own
 * bit generator. */
static inline unsigned long long nc_pcg64_next64(unsigned __int128* s, unsigned __int128 inc)
{
    const unsigned __int128 M = ((unsigned __int128) 0x2360ED051FC65DA4ULL << 64)
                                | (unsigned __int128) 0x4385DF649FCCF645ULL;
    const unsigned __int128 x = *s * M + inc;
    *s = x;
    const unsigned long long hi = (unsigned long long) (x >> 64);
    const unsigned long long v = hi ^ (unsigned long long) x;
    const unsigned rot = (unsigned) (hi >> 58);
    return (v >> rot) | (v << ((-rot) & 63u));
}

static inline double nc_pcg64_next_double(unsigned __int128* s, unsigned __int128 inc)
{
    return (double) (nc_pcg64_next64(s, inc) >> 11) * (1.0 / 9007199254740992.0);
}

/* The LCG's jump by k steps: s_k = m s + c with (m, c) from square-and-multiply
 * (PCG's pcg_advance_lcg_128), so that chains starting k draws apart run side by side. */
static inline void nc_pcg64_jump(unsigned long long k, unsigned __int128 inc,
                                 unsigned __int128* m, unsigned __int128* c)
{
    unsigned __int128 cm = ((unsigned __int128) 0x2360ED051FC65DA4ULL << 64)
                           | (unsigned __int128) 0x4385DF649FCCF645ULL;
    unsigned __int128 cp = inc, am = 1, ap = 0;
    while (k > 0) {
        if (k & 1) {
            am = am * cm;
            ap = ap * cm + cp;
        }
        cp = (cm + 1) * cp;
        cm = cm * cm;
        k >>= 1;
    }
    *m = am;
    *c = ap;
}

/* The rows of `steps` steps of one stream, as rules.pyx _draw_batch draws them (perm: N
 * entries, the identity, left the identity; jbuf: B entries): out[n B + k] = row k of
 * step n.  Integer work only (about 6 ns per row on the machine of docs/scan.md). */
static inline void nc_lane_draw_rows(Py_ssize_t N, Py_ssize_t B, Py_ssize_t steps,
                                     const unsigned long long* st, unsigned int* perm,
                                     unsigned int* jbuf, unsigned int* out)
{
    /* st: the stream as ctx.rng0 holds it (state >> 64, state mod 2^64, inc >> 64, ...) */
    unsigned __int128 s = ((unsigned __int128) st[0] << 64) | (unsigned __int128) st[1];
    const unsigned __int128 inc = ((unsigned __int128) st[2] << 64) | (unsigned __int128) st[3];
    for (Py_ssize_t n = 0; n < steps; ++n) {
        for (Py_ssize_t i = 0; i < B; ++i) {
            Py_ssize_t j = i + (Py_ssize_t) (nc_pcg64_next_double(&s, inc) * (double) (N - i));
            if (j >= N) j = N - 1;
            const unsigned int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
            jbuf[i] = (unsigned int) j;
        }
        for (Py_ssize_t k = 0; k < B; ++k) out[n * B + k] = perm[k];
        for (Py_ssize_t i = B - 1; i >= 0; --i) {
            const unsigned int j = jbuf[i], t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
}

/* the task of slot k (ctx.slot_task), -1 for a padding lane */
static inline Py_ssize_t nc_lane_task(const nc_lane_ctx* c, Py_ssize_t k)
{
    if (c->slot_task != NULL) return k < c->nslots ? c->slot_task[k] : -1;
    return k < c->P ? k : -1;
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>             /* vector square roots (lanes_impl.h NCL(vsqrt)) */
#endif

#if defined(__GNUC__)
/* the helpers take and return vectors: inlined, they stay in registers (a call would pass
   a 64-byte vector through memory wherever the instruction set has narrower registers) */
#define NC_INLINE static inline __attribute__((always_inline))
#else
#define NC_INLINE static inline
#endif

#if defined(__GNUC__) && !defined(__clang__)
/* the vector arguments are those of static functions, inlined: no ABI is involved */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* the generic version: baseline instruction set of the build */
#define NCL(name) nc_lane_##name##_base
#include "lanes_impl.h"
#undef NCL

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NC_LANES_X86 1
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f")
#define NCL(name) nc_lane_##name##_avx512
#include "lanes_impl.h"
#undef NCL
#pragma GCC pop_options
#else
#define NC_LANES_X86 0
#endif

/* the best version this CPU runs */
static inline int nc_lane_best_isa(void)
{
#if NC_LANES_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return NC_ISA_AVX512;
#endif
    return NC_ISA_BASE;
}

/* 1 if this build and CPU can run version isa */
static inline int nc_lane_isa_available(int isa)
{
    return isa == NC_ISA_BASE || (isa == NC_ISA_AVX512 && nc_lane_best_isa() == isa);
}

static inline void nc_lane_run_block(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0)
{
#if NC_LANES_X86
    if (c->isa == NC_ISA_AVX512) { nc_lane_run_block_avx512(c, w, p0); return; }
#endif
    nc_lane_run_block_base(c, w, p0);
}

#endif
