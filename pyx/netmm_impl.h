/* Body of pyx/netmm.h, compiled once per instruction set (NCM names the version).
 * No include guard: included twice.  Each tile keeps RR x (one vector) independent sums
 * in registers; every sum runs over its index in order, exactly as the scalar tails do. */

/* ---- forward: Z = In Wt (+ bias); two interleaved partial sums (even / odd j) ------ */

#define NC_FWD_TILE(VT, RR)                                                            \
    do {                                                                               \
        VT a0[RR], a1[RR];                                                             \
        for (int r = 0; r < RR; r++) { a0[r] = (VT){0}; a1[r] = (VT){0}; }             \
        for (j = 0; j + 1 < n_in; j += 2) {                                            \
            VT w0 = *(const VT*)(Wt + j * n_out + u);                                  \
            VT w1 = *(const VT*)(Wt + (j + 1) * n_out + u);                            \
            for (int r = 0; r < RR; r++) {                                             \
                a0[r] = a0[r] + x[r * n_in + j] * w0;                                  \
                a1[r] = a1[r] + x[r * n_in + j + 1] * w1;                              \
            }                                                                          \
        }                                                                              \
        if (j < n_in) {                                                                \
            VT w0 = *(const VT*)(Wt + j * n_out + u);                                  \
            for (int r = 0; r < RR; r++) a0[r] = a0[r] + x[r * n_in + j] * w0;         \
        }                                                                              \
        for (int r = 0; r < RR; r++) {                                                 \
            VT s = a0[r] + a1[r];                                                      \
            if (bias != NULL) s = s + *(const VT*)(bias + u);                          \
            *(VT*)(z + r * n_out + u) = s;                                             \
        }                                                                              \
    } while (0)

static void NCM(fwd)(const double* restrict In, Py_ssize_t B, Py_ssize_t n_in,
                     const double* restrict Wt, const double* restrict bias,
                     Py_ssize_t n_out, double* restrict Z)
{
    Py_ssize_t i, u, j, R;
    for (i = 0; i < B; i += R) {
        const double* x = In + i * n_in;
        double* z = Z + i * n_out;
        R = B - i >= 4 ? 4 : 1;
        u = 0;
        if (R == 4) {
            for (; u + 8 <= n_out; u += 8) NC_FWD_TILE(nc_m8, 4);
            for (; u + 4 <= n_out; u += 4) NC_FWD_TILE(nc_m4, 4);
        } else {
            for (; u + 8 <= n_out; u += 8) NC_FWD_TILE(nc_m8, 1);
            for (; u + 4 <= n_out; u += 4) NC_FWD_TILE(nc_m4, 1);
        }
        for (; u < n_out; u++) {                        /* the scalar order itself */
            for (Py_ssize_t r = 0; r < R; r++) {
                double s0 = 0.0, s1 = 0.0;
                for (j = 0; j + 1 < n_in; j += 2) {
                    s0 = s0 + x[r * n_in + j] * Wt[j * n_out + u];
                    s1 = s1 + x[r * n_in + j + 1] * Wt[(j + 1) * n_out + u];
                }
                if (j < n_in) s0 = s0 + x[r * n_in + j] * Wt[j * n_out + u];
                z[r * n_out + u] = s0 + s1;
                if (bias != NULL) z[r * n_out + u] = z[r * n_out + u] + bias[u];
            }
        }
    }
}

/* ---- weight gradient: gW[u, j] = sum_i dZ[i, u] In[i, j], i in order -------------- */

#define NC_BWDW_TILE(VT, UU)                                                           \
    do {                                                                               \
        VT acc[UU];                                                                    \
        for (int r = 0; r < UU; r++)                                                   \
            acc[r] = i0 == 0 ? (VT){0} : *(const VT*)(gW + (u + r) * n_in + j);        \
        for (i = i0; i < i1; i++) {                                                    \
            VT xv = *(const VT*)(In + i * n_in + j);                                   \
            const double* c = dZ + i * n_out + u;                                      \
            for (int r = 0; r < UU; r++) acc[r] = acc[r] + c[r] * xv;                  \
        }                                                                              \
        for (int r = 0; r < UU; r++) *(VT*)(gW + (u + r) * n_in + j) = acc[r];         \
    } while (0)

/* rows per pass: a pass reads NC_BWDW_ROWS rows of In and dZ once per tile of gW, so they
 * stay in the L1 cache across the tiles (at full batch the rows would otherwise stream
 * from L2/L3 once per tile); a sum carried from one pass to the next is stored in gW and
 * read back, exactly, so every sum still runs over i in order */
#define NC_BWDW_ROWS 64

static void NCM(bwd_w)(const double* restrict dZ, const double* restrict In, Py_ssize_t B,
                       Py_ssize_t n_in, Py_ssize_t n_out, double* restrict gW)
{
    Py_ssize_t i, u, j, U, i0, i1;
    for (i0 = 0; i0 < B; i0 = i1) {
        i1 = B - i0 > NC_BWDW_ROWS ? i0 + NC_BWDW_ROWS : B;
        for (u = 0; u < n_out; u += U) {
            U = n_out - u >= 8 ? 8 : (n_out - u >= 4 ? 4 : 1);
            j = 0;
            if (U == 8) {
                for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 8);
                for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 8);
            } else if (U == 4) {
                for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 4);
                for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 4);
            } else {
                for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 1);
                for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 1);
            }
            for (; j < n_in; j++) {
                for (Py_ssize_t r = 0; r < U; r++) {
                    double acc = i0 == 0 ? 0.0 : gW[(u + r) * n_in + j];
                    for (i = i0; i < i1; i++)
                        acc = acc + dZ[i * n_out + u + r] * In[i * n_in + j];
                    gW[(u + r) * n_in + j] = acc;
                }
            }
        }
    }
}

/* ---- input gradient: dIn[i, j] = sum_u dZ[i, u] W[u, j], u in order --------------- */

#define NC_BWDX_TILE(VT, RR)                                                           \
    do {                                                                               \
        VT acc[RR];                                                                    \
        for (int r = 0; r < RR; r++) acc[r] = (VT){0};                                 \
        for (u = 0; u < n_out; u++) {                                                  \
            VT wv = *(const VT*)(W + u * n_in + j);                                    \
            for (int r = 0; r < RR; r++) acc[r] = acc[r] + c[r * n_out + u] * wv;      \
        }                                                                              \
        for (int r = 0; r < RR; r++) *(VT*)(dx + r * n_in + j) = acc[r];               \
    } while (0)

static void NCM(bwd_x)(const double* restrict dZ, const double* restrict W, Py_ssize_t B,
                       Py_ssize_t n_in, Py_ssize_t n_out, double* restrict dIn)
{
    Py_ssize_t i, u, j, R;
    for (i = 0; i < B; i += R) {
        const double* c = dZ + i * n_out;
        double* dx = dIn + i * n_in;
        R = B - i >= 8 ? 8 : (B - i >= 4 ? 4 : 1);
        j = 0;
        if (R == 8) {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 8);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 8);
        } else if (R == 4) {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 4);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 4);
        } else {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 1);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 1);
        }
        for (; j < n_in; j++) {
            for (Py_ssize_t r = 0; r < R; r++) {
                double s = 0.0;
                for (u = 0; u < n_out; u++) s = s + c[r * n_out + u] * W[u * n_in + j];
                dx[r * n_in + j] = s;
            }
        }
    }
}


/* ---- one hidden layer's BatchNorm, affine map and activation, forward --------------
 * Z (B, w) in place: Z <- Zh = (Z - mean)/sd, sd = sqrt(var + eps), var biased (1/B),
 * when bn; A = act(gam*Zh + bet) (affine) or act(Zh); act = relu (0 if h <= 0 else h:
 * a NaN propagates, -0 becomes +0) or the identity.  Every statistic is a sum over the
 * rows in order from +0, one per unit; a group of NV vectors of columns keeps its sums in
 * registers while it runs down the rows (a sum kept in memory would wait for its own
 * store at every row). */
#define NC_BN_FWD_COLS(SUF, VT, LT, NV)                                                 \
static inline __attribute__((always_inline)) void NCM(bn_fwd_##SUF)(                    \
    double* restrict Z, double* restrict A, Py_ssize_t B, Py_ssize_t w, Py_ssize_t u,    \
    int bn, double eps, double* restrict mean, double* restrict sd, int affine,          \
    const double* restrict gam, const double* restrict bet, int relu)                    \
{                                                                                        \
    enum { VW = sizeof(VT) / sizeof(double) };                                           \
    VT s[NV], m[NV], sv[NV], gv[NV], bv[NV];                                             \
    Py_ssize_t i;                                                                        \
    double Bd = (double) B;                                                              \
    for (int v = 0; v < NV; v++) sv[v] = (VT){0};      /* read only if bn */            \
    if (bn) {                                                                            \
        for (int v = 0; v < NV; v++) s[v] = (VT){0};                                     \
        for (i = 0; i < B; i++) {                                                        \
            const double* z = Z + i * w + u;                                             \
            for (int v = 0; v < NV; v++) s[v] = s[v] + *(const VT*)(z + v * VW);         \
        }                                                                                \
        for (int v = 0; v < NV; v++) {                                                   \
            m[v] = s[v] / Bd;                                                            \
            *(VT*)(mean + u + v * VW) = m[v];                                            \
            s[v] = (VT){0};                                                              \
        }                                                                                \
        for (i = 0; i < B; i++) {                                                        \
            double* z = Z + i * w + u;                                                   \
            for (int v = 0; v < NV; v++) {                                               \
                VT c = *(VT*)(z + v * VW) - m[v];                                        \
                *(VT*)(z + v * VW) = c;                                                  \
                s[v] = s[v] + c * c;                                                     \
            }                                                                            \
        }                                                                                \
        for (int v = 0; v < NV; v++) *(VT*)(sd + u + v * VW) = s[v];                     \
        for (Py_ssize_t k = u; k < u + NV * VW; k++) sd[k] = sqrt(sd[k] / Bd + eps);     \
        for (int v = 0; v < NV; v++) sv[v] = *(const VT*)(sd + u + v * VW);              \
    }                                                                                    \
    if (affine)                                                                          \
        for (int v = 0; v < NV; v++) {                                                   \
            gv[v] = *(const VT*)(gam + u + v * VW);                                      \
            bv[v] = *(const VT*)(bet + u + v * VW);                                      \
        }                                                                                \
    for (i = 0; i < B; i++) {                                                            \
        double* z = Z + i * w + u;                                                       \
        double* a = A + i * w + u;                                                       \
        for (int v = 0; v < NV; v++) {                                                   \
            VT h = *(VT*)(z + v * VW);                                                   \
            if (bn) {                                                                    \
                h = h / sv[v];                                                           \
                *(VT*)(z + v * VW) = h;                                                  \
            }                                                                            \
            if (affine) h = gv[v] * h + bv[v];                                           \
            if (relu) h = (VT)((LT)h & ~(LT)(h <= (VT){0}));                             \
            *(VT*)(a + v * VW) = h;                                                      \
        }                                                                                \
    }                                                                                    \
}

/* ---- the same layer backward: dA (B, w) in place -> dL/dZ ---------------------------
 * dH = dA * 1[A > 0] (relu); dgam = sum_i dH*Zh, dbet = sum_i dH, dZh = dH*gam (affine);
 * dZ = (dZh - mean(dZh) - Zh*mean(dZh*Zh))/sd (bn, docs/potentials.md Eq. P.4).  The
 * masking, the affine sums and BatchNorm's two means are one pass down the rows (each
 * element sees the scalar kernel's operations, in its order), the normalisation a
 * second.  (With bn off only the mask applies: TwoLayer.) */
#define NC_BN_BWD_COLS(SUF, VT, LT, NV)                                                 \
static inline __attribute__((always_inline)) void NCM(bn_bwd_##SUF)(                    \
    double* restrict dA, const double* restrict Zh, const double* restrict A,            \
    Py_ssize_t B, Py_ssize_t w, Py_ssize_t u, int relu, int affine,                      \
    const double* restrict gam, double* restrict dgam, double* restrict dbet,            \
    const double* restrict sd, double* restrict m1, double* restrict m2)                 \
{                                                                                        \
    enum { VW = sizeof(VT) / sizeof(double) };                                           \
    VT s1[NV], s2[NV], dg[NV], db[NV], gv[NV], sv[NV];                                   \
    Py_ssize_t i;                                                                        \
    double Bd = (double) B;                                                              \
    for (int v = 0; v < NV; v++) {                                                       \
        s1[v] = (VT){0}; s2[v] = (VT){0}; dg[v] = (VT){0}; db[v] = (VT){0};              \
        if (affine) gv[v] = *(const VT*)(gam + u + v * VW);                              \
        sv[v] = *(const VT*)(sd + u + v * VW);                                           \
    }                                                                                    \
    for (i = 0; i < B; i++) {                                                            \
        double* dd = dA + i * w + u;                                                     \
        const double* zh = Zh + i * w + u;                                               \
        const double* a = A + i * w + u;                                                 \
        for (int v = 0; v < NV; v++) {                                                   \
            VT d = *(VT*)(dd + v * VW);                                                  \
            VT z = *(const VT*)(zh + v * VW);                                            \
            if (relu) d = (VT)((LT)d & ~(LT)(*(const VT*)(a + v * VW) <= (VT){0}));      \
            if (affine) {                                                                \
                dg[v] = dg[v] + d * z;                                                   \
                db[v] = db[v] + d;                                                       \
                d = d * gv[v];                                                           \
            }                                                                            \
            s1[v] = s1[v] + d;                                                           \
            s2[v] = s2[v] + d * z;                                                       \
            *(VT*)(dd + v * VW) = d;                                                     \
        }                                                                                \
    }                                                                                    \
    for (int v = 0; v < NV; v++) {                                                       \
        s1[v] = s1[v] / Bd;                                                              \
        s2[v] = s2[v] / Bd;                                                              \
        *(VT*)(m1 + u + v * VW) = s1[v];                                                 \
        *(VT*)(m2 + u + v * VW) = s2[v];                                                 \
        if (affine) {                                                                    \
            *(VT*)(dgam + u + v * VW) = dg[v];                                           \
            *(VT*)(dbet + u + v * VW) = db[v];                                           \
        }                                                                                \
    }                                                                                    \
    for (i = 0; i < B; i++) {                                                            \
        double* dd = dA + i * w + u;                                                     \
        const double* zh = Zh + i * w + u;                                               \
        for (int v = 0; v < NV; v++) {                                                   \
            VT d = *(VT*)(dd + v * VW);                                                  \
            *(VT*)(dd + v * VW) = (d - s1[v] - *(const VT*)(zh + v * VW) * s2[v]) / sv[v]; \
        }                                                                                \
    }                                                                                    \
}

NC_BN_FWD_COLS(m8x2, nc_m8, nc_l8, 2)
NC_BN_FWD_COLS(m8x1, nc_m8, nc_l8, 1)
NC_BN_FWD_COLS(m4x1, nc_m4, nc_l4, 1)
NC_BN_FWD_COLS(m1x1, nc_m1, nc_l1, 1)
NC_BN_BWD_COLS(m8x2, nc_m8, nc_l8, 2)
NC_BN_BWD_COLS(m8x1, nc_m8, nc_l8, 1)
NC_BN_BWD_COLS(m4x1, nc_m4, nc_l4, 1)
NC_BN_BWD_COLS(m1x1, nc_m1, nc_l1, 1)

static void NCM(bn_act_fwd)(double* restrict Z, double* restrict A, Py_ssize_t B,
                            Py_ssize_t w, int bn, double eps, double* restrict mean,
                            double* restrict sd, int affine, const double* restrict gam,
                            const double* restrict bet, int relu)
{
    Py_ssize_t u = 0;
    for (; u + 16 <= w; u += 16)
        NCM(bn_fwd_m8x2)(Z, A, B, w, u, bn, eps, mean, sd, affine, gam, bet, relu);
    for (; u + 8 <= w; u += 8)
        NCM(bn_fwd_m8x1)(Z, A, B, w, u, bn, eps, mean, sd, affine, gam, bet, relu);
    for (; u + 4 <= w; u += 4)
        NCM(bn_fwd_m4x1)(Z, A, B, w, u, bn, eps, mean, sd, affine, gam, bet, relu);
    for (; u < w; u++)
        NCM(bn_fwd_m1x1)(Z, A, B, w, u, bn, eps, mean, sd, affine, gam, bet, relu);
}

static void NCM(bn_act_bwd)(double* restrict dA, const double* restrict Zh,
                            const double* restrict A, Py_ssize_t B, Py_ssize_t w, int relu,
                            int bn, int affine, const double* restrict gam,
                            double* restrict dgam, double* restrict dbet,
                            const double* restrict sd, double* restrict m1,
                            double* restrict m2)
{
    Py_ssize_t u = 0;
    if (!bn) {
        if (relu)
            for (Py_ssize_t i = 0; i < B * w; i++) dA[i] = A[i] <= 0.0 ? 0.0 : dA[i];
        return;
    }
    for (; u + 16 <= w; u += 16)
        NCM(bn_bwd_m8x2)(dA, Zh, A, B, w, u, relu, affine, gam, dgam, dbet, sd, m1, m2);
    for (; u + 8 <= w; u += 8)
        NCM(bn_bwd_m8x1)(dA, Zh, A, B, w, u, relu, affine, gam, dgam, dbet, sd, m1, m2);
    for (; u + 4 <= w; u += 4)
        NCM(bn_bwd_m4x1)(dA, Zh, A, B, w, u, relu, affine, gam, dgam, dbet, sd, m1, m2);
    for (; u < w; u++)
        NCM(bn_bwd_m1x1)(dA, Zh, A, B, w, u, relu, affine, gam, dgam, dbet, sd, m1, m2);
}

#undef NC_BN_FWD_COLS
#undef NC_BN_BWD_COLS
#undef NC_FWD_TILE
#undef NC_BWDW_TILE
#undef NC_BWDX_TILE
#undef NC_BWDW_ROWS
