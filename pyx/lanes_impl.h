/* Lane kernel body: included by lanes.h once per instruction set, with NCL(name) giving
 * the per-ISA function name.  Read docs/scan.md §"Lanes" first.
 *
 * A *block* is NC_NL grid points advanced together, one point per lane.  Per-point
 * numbers are stored lane-fastest (x[i * NC_NL + l] is coordinate i of lane l), i.e. as
 * arrays of nc_vd vectors, and all arithmetic is on whole vectors.  Each lane performs
 * exactly the floating-point operations, in exactly the order, of the scalar code it
 * mirrors (pyx/rules.pyx _step_sgd and the charges, pyx/potentials.pyx _c_grad_*,
 * pyx/scan.pyx summaries): vector arithmetic is element-wise IEEE arithmetic, there is no
 * reduction across lanes and no reassociation (-ffp-contract=off, no -ffast-math), so a
 * lane is bitwise the scalar run.  Per-lane branches of the scalar code become selects
 * (both sides computed, one kept bit for bit), which are exact.
 */

#define NCV(p) ((nc_vd*) (p))
#define NCCV(p) ((const nc_vd*) (p))

NC_INLINE nc_vd NCL(sel)(nc_vl m, nc_vd a, nc_vd b)   /* m ? a : b, per lane */
{
    return (nc_vd) (((nc_vl) a & m) | ((nc_vl) b & ~m));
}

NC_INLINE nc_vd NCL(fabs)(nc_vd x)                    /* exact: clears the sign bits */
{
    return (nc_vd) ((nc_vl) x & ((nc_vl) {0} + 0x7fffffffffffffffLL));
}

/* 1 if some lane's mask is set (on AVX-512 one test into a mask register; the generic
   form extracts the lanes one by one, ~20 instructions) */
NC_INLINE int NCL(any)(nc_vl m)
{
#if defined(__AVX512F__) && NC_NL == 8
    return _mm512_test_epi64_mask((__m512i) m, (__m512i) m) != 0;
#else
    int r = 0;
    for (int l = 0; l < NC_NL; ++l) r |= m[l] != 0;
    return r;
#endif
}

/* Finiteness probes (rules.pyx _nan_probe): x * 0 is NaN exactly when x is NaN or inf,
 * and a sum with a NaN term is NaN, so probe(x) = sum_i x_i * 0 is NaN in exactly the
 * lanes where some x_i is not finite, and +-0 elsewhere.  Whether a lane's probe is NaN
 * does not depend on the order of the sum, so it is summed as a tree (short dependency
 * chains) -- the probe decides only which lanes stop, never a value. */
NC_INLINE nc_vd NCL(probe)(const nc_vd* restrict x, Py_ssize_t n, nc_vd init)
{
    nc_vd p0 = init, p1 = {0}, p2 = {0}, p3 = {0};
    Py_ssize_t k = 0;
    for (; k + 4 <= n; k += 4) {
        p0 = p0 + x[k] * 0.0;
        p1 = p1 + x[k + 1] * 0.0;
        p2 = p2 + x[k + 2] * 0.0;
        p3 = p3 + x[k + 3] * 0.0;
    }
    for (; k < n; ++k) p0 = p0 + x[k] * 0.0;
    return (p0 + p1) + (p2 + p3);
}

/* mask of the lanes whose probe is NaN */
NC_INLINE nc_vl NCL(nonfinite)(nc_vd probe)
{
    return probe != probe;
}

/* 1 if some lane's probe is NaN */
NC_INLINE int NCL(any_nan)(nc_vd probe)
{
#if defined(__AVX512F__) && NC_NL == 8
    return _mm512_cmp_pd_mask((__m512d) probe, (__m512d) probe, _CMP_UNORD_Q) != 0;
#else
    return NCL(any)(probe != probe);
#endif
}

/* ---- potentials, lane form ------------------------------------------------------- */

/* (A q)_i for rows i0 .. i0 + R - 1 (R <= 4), each summed over j in order from its first
 * term (d >= 1): the rows are independent sums, interleaved so that four dependency
 * chains run at once */
NC_INLINE void NCL(rows4)(const double* restrict A, Py_ssize_t d, Py_ssize_t i0, int R,
                              const nc_vd* restrict q, nc_vd* restrict out)
{
    const double* a0 = A + i0 * d;
    if (R == 4) {
        nc_vd s0 = a0[0] * q[0], s1 = a0[d] * q[0], s2 = a0[2 * d] * q[0],
              s3 = a0[3 * d] * q[0];
        for (Py_ssize_t j = 1; j < d; ++j) {
            const nc_vd qj = q[j];
            s0 = s0 + a0[j] * qj;
            s1 = s1 + a0[d + j] * qj;
            s2 = s2 + a0[2 * d + j] * qj;
            s3 = s3 + a0[3 * d + j] * qj;
        }
        out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
        return;
    }
    for (int r = 0; r < R; ++r) {
        nc_vd s = a0[r * d] * q[0];
        for (Py_ssize_t j = 1; j < d; ++j) s = s + a0[r * d + j] * q[j];
        out[r] = s;
    }
}

/* _c_grad_quadratic: f = sum_i q_i (0.5 (Aq)_i - b_i), g = A q - b */
NC_INLINE nc_vd NCL(grad_quadratic)(const nc_lane_ctx* c, const Py_ssize_t d,
                                     const nc_vd* restrict q, nc_vd* restrict g)
{
    const double* restrict b = c->b;
    nc_vd f = {0}, s[4];
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 4) {
        const int R = d - i0 < 4 ? (int) (d - i0) : 4;
        NCL(rows4)(c->A, d, i0, R, q, s);
        for (int r = 0; r < R; ++r) {
            const Py_ssize_t i = i0 + r;
            f = f + q[i] * (0.5 * s[r] - b[i]);
            g[i] = s[r] - b[i];
        }
    }
    return f;
}

NC_INLINE void NCL(free_dens)(const Py_ssize_t d, nc_lane_ws* w);

/* _c_grad_rayleigh: iqq = 1/qq first, then per row i: (Aq)_i, the term q_i (Aq)_i of qAq
 * (summed over i in order) and (Aq)_i * iqq; t = qAq * iqq, f = t/2, and
 * g_i = (Aq)_i iqq - q_i (t iqq).  No division on the path from Aq to g; every sum starts
 * from its first term (docs/potentials.md §2).  qqp (or NULL): |q|^2 summed already, the
 * previous fused step's A_{n+1} (docs/balance_laws.md (8.6)).  side (or NULL): the
 * workspace whose step's free denominators (NCL(free_dens)) are formed after the first
 * block of rows, where the divider is idle (docs/balance_laws.md §8, "During the
 * gradient"); they read q_n and the rule's state, which the gradient does not touch. */
NC_INLINE nc_vd NCL(grad_rayleigh)(const nc_lane_ctx* c, const Py_ssize_t d,
                                   const nc_vd* restrict q, nc_vd* restrict g,
                                   nc_vd* restrict Aq, const nc_vd* qqp, nc_lane_ws* side)
{
    nc_vd qAq = {0}, qq;
    if (qqp != NULL) {
        qq = *qqp;
    } else {
        qq = q[0] * q[0];
        for (Py_ssize_t i = 1; i < d; ++i) qq = qq + q[i] * q[i];
    }
    const nc_vd iqq = 1.0 / qq;
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 4) {
        const int R = d - i0 < 4 ? (int) (d - i0) : 4;
        nc_vd s[4];
        NCL(rows4)(c->A, d, i0, R, q, s);
        for (int r = 0; r < R; ++r) {
            const Py_ssize_t i = i0 + r;
            qAq = i == 0 ? q[0] * s[0] : qAq + q[i] * s[r];
            Aq[i] = s[r] * iqq;
        }
        if (side != NULL && i0 == 0) NCL(free_dens)(d, side);
    }
    const nc_vd t = qAq * iqq;
    const nc_vd ti = t * iqq;
    for (Py_ssize_t i = 0; i < d; ++i) g[i] = Aq[i] - q[i] * ti;
    return 0.5 * t;
}

/* _c_grad_bn_unit's body, the scalar code's order: the row products with four interleaved
 * accumulators (_dot4), then row by row.  One text for the two readings of the rows below
 * (XT: the type of a row pointer, XROW(i): row i, YAT(i): its target): a shared row of
 * doubles broadcast to every lane (full batch) or each lane's own gathered row (minibatch);
 * either way every lane performs the same IEEE operations in the same order. */
#define NC_BN_UNIT_GRAD_BODY(BATCH, XT, XROW, YAT)                                        \
    const Py_ssize_t B = (BATCH), m4 = d - d % 4;                                         \
    const double Bd = (double) B, invB = 1.0 / (double) B;                                \
    nc_vd mean = {0}, var = {0}, fa = {0}, md = {0}, mdz = {0};                           \
    for (Py_ssize_t i = 0; i < B; ++i) {                                                  \
        XT restrict x = XROW(i);                                                          \
        nc_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
        Py_ssize_t j = 0;                                                                 \
        for (; j < m4; j += 4) {                                                          \
            a0 = a0 + x[j] * q[j];                                                        \
            a1 = a1 + x[j + 1] * q[j + 1];                                                \
            a2 = a2 + x[j + 2] * q[j + 2];                                                \
            a3 = a3 + x[j + 3] * q[j + 3];                                                \
        }                                                                                 \
        for (; j < d; ++j) a0 = a0 + x[j] * q[j];                                         \
        const nc_vd s = (a0 + a1) + (a2 + a3);                                            \
        z[i] = s;                                                                         \
        mean = mean + s;                                                                  \
    }                                                                                     \
    mean = mean / Bd;                                                                     \
    for (Py_ssize_t i = 0; i < B; ++i) {                                                  \
        const nc_vd zc = z[i] - mean;                                                     \
        z[i] = zc;                                                                        \
        var = var + zc * zc;                                                              \
    }                                                                                     \
    var = var / Bd;                                                                       \
    nc_vd isd;                                                                            \
    for (int l = 0; l < NC_NL; ++l) isd[l] = 1.0 / sqrt(var[l] + c->eps);                 \
    for (Py_ssize_t i = 0; i < B; ++i) {                                                  \
        const nc_vd zh = z[i] * isd;                                                      \
        const nc_vd e = zh - YAT(i);                                                      \
        z[i] = zh;                                                                        \
        fa = fa + e * e;                                                                  \
        md = md + e;                                                                      \
        mdz = mdz + e * zh;                                                               \
    }                                                                                     \
    const nc_vd f = 0.5 * fa / Bd + (var - var);   /* NaN where var overflowed, else + 0 */ \
    md = md / Bd / Bd;                                                                    \
    mdz = mdz / Bd / Bd;                                                                  \
    for (Py_ssize_t j = 0; j < d; ++j) g[j] = (nc_vd) {0};                                \
    for (Py_ssize_t i = 0; i < B; ++i) {                                                  \
        XT restrict x = XROW(i);                                                          \
        const nc_vd dz = ((z[i] - YAT(i)) * invB - md - z[i] * mdz) * isd;                \
        for (Py_ssize_t j = 0; j < d; ++j) g[j] = g[j] + dz * x[j];                       \
    }                                                                                     \
    return f;

/* _c_grad_bn_unit on the full batch (all N rows): row i shared by the lanes */
NC_INLINE nc_vd NCL(grad_bn_unit)(const nc_lane_ctx* c, const Py_ssize_t d,
                                  const nc_vd* restrict q, nc_vd* restrict g,
                                  nc_vd* restrict z)
{
    const double* restrict X = c->X;
    const double* restrict y = c->y;
#define NC_ROW(i) (X + (i) * d)
#define NC_Y(i) (y[i])
    NC_BN_UNIT_GRAD_BODY(c->N, const double*, NC_ROW, NC_Y)
#undef NC_ROW
#undef NC_Y
}

/* _bn_unit_full (pyx/potentials.pyx): the full batch in O(d^2), docs/potentials.md 4a;
 * a and v (d vectors each) in the scratch z */
NC_INLINE nc_vd NCL(grad_bn_unit_full)(const nc_lane_ctx* c, const Py_ssize_t d,
                                       const nc_vd* restrict w, nc_vd* restrict g,
                                       nc_vd* restrict z)
{
    const double* restrict R = c->R;
    const double* restrict t = c->t;
    const double Nd = (double) c->N, invN = 1.0 / (double) c->N, invN2 = 1.0 / (Nd * Nd);
    nc_vd* restrict a = z;
    nc_vd* restrict v = z + d;
    nc_vd uu = {0}, vv = {0}, va = {0};
    /* u_i = sum_{j >= i} R_ij w_j in order from +0, rows in groups of four: the
       triangle at the head of a group first (row i0 + r starts at j = i0 + r), then the
       columns the four rows share */
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 4) {
        const int Rn = d - i0 < 4 ? (int) (d - i0) : 4;
        nc_vd s[4] = {{0}, {0}, {0}, {0}};
        if (Rn == 4) {
            const double* R0 = R + i0 * d;
            const double* R1 = R0 + d;
            const double* R2 = R1 + d;
            const double* R3 = R2 + d;
            s[0] = s[0] + R0[i0] * w[i0];
            s[0] = s[0] + R0[i0 + 1] * w[i0 + 1];
            s[1] = s[1] + R1[i0 + 1] * w[i0 + 1];
            s[0] = s[0] + R0[i0 + 2] * w[i0 + 2];
            s[1] = s[1] + R1[i0 + 2] * w[i0 + 2];
            s[2] = s[2] + R2[i0 + 2] * w[i0 + 2];
            for (Py_ssize_t j = i0 + 3; j < d; ++j) {
                const nc_vd wj = w[j];
                s[0] = s[0] + R0[j] * wj;
                s[1] = s[1] + R1[j] * wj;
                s[2] = s[2] + R2[j] * wj;
                s[3] = s[3] + R3[j] * wj;
            }
        } else {
            for (int r = 0; r < Rn; ++r)
                for (Py_ssize_t j = i0 + r; j < d; ++j)
                    s[r] = s[r] + R[(i0 + r) * d + j] * w[j];
        }
        for (int r = 0; r < Rn; ++r) {
            a[i0 + r] = s[r];
            uu = uu + s[r] * s[r];
        }
    }
    const nc_vd var = uu * invN;
    nc_vd isd = var + c->eps;
    for (int l = 0; l < NC_NL; ++l) isd[l] = 1.0 / sqrt(isd[l]);
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd ai = a[i] * isd, vi = ai - t[i];
        a[i] = ai;
        v[i] = vi;
        vv = vv + vi * vi;
        va = va + vi * ai;
    }
    const nc_vd f = 0.5 * (vv + c->rho2) / Nd + (var - var);   /* as the scalar code */
    const nc_vd m = va * invN2;
    const nc_vd c1 = invN * isd, c2 = m * isd;
    for (Py_ssize_t i = 0; i < d; ++i) v[i] = v[i] * c1 - a[i] * c2;             /* y' */
    /* g_j = sum_{i <= j} y'_i R_ij over i in order from +0 (the scalar loop's order),
       four columns at a time so that four sums run at once in registers: the rows the
       four columns share first, then the triangle at the foot of the group */
    for (Py_ssize_t j0 = 0; j0 < d; j0 += 4) {
        const int Cn = d - j0 < 4 ? (int) (d - j0) : 4;
        if (Cn == 4) {
            nc_vd s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            for (Py_ssize_t i = 0; i <= j0; ++i) {
                const nc_vd yi = v[i];
                const double* Ri = R + i * d + j0;
                s0 = s0 + yi * Ri[0];
                s1 = s1 + yi * Ri[1];
                s2 = s2 + yi * Ri[2];
                s3 = s3 + yi * Ri[3];
            }
            const double* R1 = R + (j0 + 1) * d + j0;
            const double* R2 = R1 + d;
            const double* R3 = R2 + d;
            s1 = s1 + v[j0 + 1] * R1[1];
            s2 = s2 + v[j0 + 1] * R1[2];
            s3 = s3 + v[j0 + 1] * R1[3];
            s2 = s2 + v[j0 + 2] * R2[2];
            s3 = s3 + v[j0 + 2] * R2[3];
            s3 = s3 + v[j0 + 3] * R3[3];
            g[j0] = s0; g[j0 + 1] = s1; g[j0 + 2] = s2; g[j0 + 3] = s3;
        } else {
            for (int r = 0; r < Cn; ++r) {
                const Py_ssize_t j = j0 + r;
                nc_vd acc = {0};
                for (Py_ssize_t i = 0; i <= j; ++i) acc = acc + v[i] * R[i * d + j];
                g[j] = acc;
            }
        }
    }
    return f;
}

/* ---- minibatch lanes (docs/scan.md "Minibatch lanes") ------------------------------ */

/* Every lane draws its step's `batch` rows as rules.pyx _draw_batch does, from its own
 * stream: a partial Fisher-Yates shuffle of the identity, j = i + (int)(u (N - i))
 * (clamped to N - 1) with u = next_double, for i = 0 .. B - 1; the rows are perm[0 .. B).
 * The lanes' streams are independent, so the loop runs i outer and lanes inner, without
 * a branch: eight LCG chains interleave (a retired or padding lane draws too; its stream
 * is never read again and its results are discarded).  The drawn rows (and y) are then
 * gathered once into xb/yb, row k of every lane at a time, so that each 64-byte vector
 * of xb is written once, from eight rows read in order; last, the swaps are undone in
 * reverse order, which leaves each permutation the identity again: O(B) per lane and
 * step instead of the scalar loop's O(N) reset, and the same rows. */
NC_INLINE void NCL(draw_batch)(const nc_lane_ctx* c, nc_lane_ws* w, const Py_ssize_t d)
{
    const Py_ssize_t B = c->batch, N = c->N;
    const double* restrict X = c->X;
    const double* restrict y = c->y;
    unsigned int* restrict swp = w->swp;
    unsigned int* restrict perm = w->perm;
    double* restrict xb = w->xb;
    double* restrict yb = w->yb;
    unsigned __int128 s[NC_NL], inc[NC_NL];
    for (int l = 0; l < NC_NL; ++l) {
        s[l] = w->rng_s[l];
        inc[l] = w->rng_inc[l];
    }
    for (Py_ssize_t i = 0; i < B; ++i) {
        const double span = (double) (N - i);
        for (int l = 0; l < NC_NL; ++l) {
            unsigned int* restrict pl = perm + (size_t) l * (size_t) N;
            Py_ssize_t j = i + (Py_ssize_t) (nc_pcg64_next_double(&s[l], inc[l]) * span);
            if (j >= N) j = N - 1;
            const unsigned int t = pl[i];
            pl[i] = pl[j];
            pl[j] = t;
            swp[i * NC_NL + l] = (unsigned int) j;
        }
    }
    for (int l = 0; l < NC_NL; ++l) w->rng_s[l] = s[l];
    for (Py_ssize_t k = 0; k < B; ++k) {
        const double* restrict x[NC_NL];
        for (int l = 0; l < NC_NL; ++l) {
            const Py_ssize_t r = perm[(size_t) l * (size_t) N + k];
            x[l] = X + r * d;
            yb[k * NC_NL + l] = y[r];
        }
        double* restrict o = xb + k * d * NC_NL;
        for (Py_ssize_t j = 0; j < d; ++j)
            for (int l = 0; l < NC_NL; ++l) o[j * NC_NL + l] = x[l][j];
    }
    for (int l = 0; l < NC_NL; ++l) {
        unsigned int* restrict pl = perm + (size_t) l * (size_t) N;
        for (Py_ssize_t i = B - 1; i >= 0; --i) {          /* back to the identity */
            const unsigned int j = swp[i * NC_NL + l], t = pl[i];
            pl[i] = pl[j];
            pl[j] = t;
        }
    }
}

/* _c_grad_bn_unit on the drawn rows (p.view.rows set): the same body, with row k of
 * lane l read from the gathered xb/yb instead of a shared row */
NC_INLINE nc_vd NCL(grad_bn_unit_mb)(const nc_lane_ctx* c, const Py_ssize_t d,
                                     const nc_vd* restrict q, nc_vd* restrict g,
                                     nc_vd* restrict z, const nc_vd* restrict xv,
                                     const nc_vd* restrict yv)
{
#define NC_ROW(i) (xv + (i) * d)
#define NC_Y(i) (yv[i])
    NC_BN_UNIT_GRAD_BODY(c->batch, const nc_vd*, NC_ROW, NC_Y)
#undef NC_ROW
#undef NC_Y
}

/* _c_grad_bn_unit on the drawn rows of a block whose lanes share one stream: the same
 * body, row k read from the data and broadcast to every lane, as the full batch reads
 * its rows (no gather) */
NC_INLINE nc_vd NCL(grad_bn_unit_sh)(const nc_lane_ctx* c, const Py_ssize_t d,
                                     const nc_vd* restrict q, nc_vd* restrict g,
                                     nc_vd* restrict z, const unsigned int* restrict rows)
{
    const double* restrict X = c->X;
    const double* restrict y = c->y;
#define NC_ROW(i) (X + (Py_ssize_t) rows[i] * d)
#define NC_Y(i) (y[rows[i]])
    NC_BN_UNIT_GRAD_BODY(c->batch, const double*, NC_ROW, NC_Y)
#undef NC_ROW
#undef NC_Y
}
#undef NC_BN_UNIT_GRAD_BODY

/* batch_form="moments" (docs/potentials.md 4b, docs/scan.md "Batch moments"): the loss
 * and gradient on a batch read through its centred moments M = [C (d x d, row by row,
 * symmetric), c (d), m], which the lanes of a seed share (formed once per stream and
 * step: pyx/scan.pyx nc_mom_table).  With u = C w (rows in groups of four, each summed
 * over j in order), s2 = w.u = sigma^2, k = c.w, isd = 1/sqrt(s2 + eps), h = k isd and
 * e2 = eps isd^2:
 *     f = ((1 - e2) - 2 h + m)/2,    g_i = (u_i isd (h + e2) - c_i) isd      (4b.2, 4b.3)
 * O(d^2) per lane and step, like the full batch's projection form; not the row form's
 * bits (the same function, rounded differently).  u goes to the scratch z. */
NC_INLINE nc_vd NCL(grad_bn_unit_mom)(const nc_lane_ctx* c, const Py_ssize_t d,
                                      const nc_vd* restrict w, nc_vd* restrict g,
                                      nc_vd* restrict u, const double* restrict M)
{
    const double* restrict cv = M + d * d;
    const double m = M[d * d + d];
    nc_vd s2 = {0}, k = {0}, s[4];
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 4) {
        const int Rn = d - i0 < 4 ? (int) (d - i0) : 4;
        NCL(rows4)(M, d, i0, Rn, w, s);
        for (int r = 0; r < Rn; ++r) {
            const Py_ssize_t i = i0 + r;
            u[i] = s[r];
            s2 = s2 + w[i] * s[r];
            k = k + cv[i] * w[i];
        }
    }
    nc_vd isd = s2 + c->eps;
    for (int l = 0; l < NC_NL; ++l) isd[l] = 1.0 / sqrt(isd[l]);
    const nc_vd h = k * isd, e2 = (c->eps * isd) * isd;
    /* s2 - s2: NaN where sigma^2 overflowed (as the row form's var - var), else +0 */
    const nc_vd f = 0.5 * (((1.0 - e2) - 2.0 * h) + m) + (s2 - s2);
    const nc_vd beta = isd * (h + e2);
    for (Py_ssize_t i = 0; i < d; ++i) g[i] = (u[i] * beta - cv[i]) * isd;
    return f;
}

/* Shared draws (every lane of the block on one stream, docs/scan.md "Minibatch lanes"):
 * the swap partners j_i = i + (int)(u (N - i)) (clamped to N - 1) of the next
 * min(tab_T, steps left) steps, drawn into jtab in one pass.  They depend on the stream
 * only (not on the permutation), so they can be drawn ahead; a full table runs as
 * NC_TAB_C chains side by side, chain k starting k tab_T / NC_TAB_C steps' draws
 * further along the stream (the LCG's jump, nc_pcg64_jump), so that the 128-bit
 * multiplies of four chains overlap instead of waiting on one another.  The draws, and
 * their order within the stream, are those of the serial loop. */
static void NCL(fill_shared)(const nc_lane_ctx* c, nc_lane_ws* w)
{
    const Py_ssize_t B = c->batch, N = c->N, T = c->tab_T;
    Py_ssize_t rows = c->steps - w->drawn;
    if (rows > T) rows = T;
    unsigned int* restrict jt = w->jtab;
    const unsigned __int128 inc = w->sh_inc;
    if (rows == T) {
        const Py_ssize_t Tc = T / NC_TAB_C;
        unsigned __int128 s[NC_TAB_C];
        s[0] = w->sh_s;
        for (int k = 1; k < NC_TAB_C; ++k) s[k] = w->jmp_m * s[k - 1] + w->jmp_c;
        for (Py_ssize_t t = 0; t < Tc; ++t)
            for (Py_ssize_t i = 0; i < B; ++i) {
                const double span = (double) (N - i);
                for (int k = 0; k < NC_TAB_C; ++k) {
                    Py_ssize_t j = i + (Py_ssize_t) (nc_pcg64_next_double(&s[k], inc) * span);
                    if (j >= N) j = N - 1;
                    jt[(k * Tc + t) * B + i] = (unsigned int) j;
                }
            }
        w->sh_s = s[NC_TAB_C - 1];
    } else {
        unsigned __int128 s = w->sh_s;
        for (Py_ssize_t t = 0; t < rows; ++t)
            for (Py_ssize_t i = 0; i < B; ++i) {
                Py_ssize_t j = i + (Py_ssize_t) (nc_pcg64_next_double(&s, inc)
                                                 * (double) (N - i));
                if (j >= N) j = N - 1;
                jt[t * B + i] = (unsigned int) j;
            }
        w->sh_s = s;
    }
    w->drawn += rows;
    w->tab_len = rows;
    w->tab_pos = 0;
}

/* This step's rows of a shared-stream block: its swaps applied to the permutation
 * (lane 0's, the identity between draws), rows = perm[0 .. B) (into swp), the swaps
 * undone in reverse order: rules.pyx _draw_batch's rows, once for the eight lanes. */
NC_INLINE const unsigned int* NCL(draw_shared)(const nc_lane_ctx* c, nc_lane_ws* w)
{
    const Py_ssize_t B = c->batch;
    if (w->rows_cur != NULL) return w->rows_cur + (w->tab_pos++) * B;   /* drawn already */
    if (w->tab_pos == w->tab_len) NCL(fill_shared)(c, w);
    const unsigned int* restrict jr = w->jtab + w->tab_pos * B;
    unsigned int* restrict perm = w->perm;
    unsigned int* restrict rows = w->swp;
    ++w->tab_pos;
    for (Py_ssize_t i = 0; i < B; ++i) {
        const unsigned int j = jr[i], t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (Py_ssize_t k = 0; k < B; ++k) rows[k] = perm[k];
    for (Py_ssize_t i = B - 1; i >= 0; --i) {              /* back to the identity */
        const unsigned int j = jr[i], t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return rows;
}

NC_INLINE void NCL(grad_d)(const nc_lane_ctx* c, nc_lane_ws* w, const Py_ssize_t d,
                           const nc_vd* qqp)
{
    if (c->pot == NC_LPOT_RAYLEIGH)
        w->f = NCL(grad_rayleigh)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux), qqp,
                                  w->free_pre != NC_PRE_NONE ? w : NULL);
    else if (c->pot == NC_LPOT_BN_UNIT && c->R != NULL)
        w->f = NCL(grad_bn_unit_full)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux));
    else if (c->pot == NC_LPOT_BN_UNIT)
        w->f = NCL(grad_bn_unit)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux));
    else
        w->f = NCL(grad_quadratic)(c, d, NCCV(w->q), NCV(w->g));
}

/* ---- the rule: _step_sgd per lane -------------------------------------------------- */

/* One SGD step of every lane from q_n = w->q with the gradient w->g: q_{n+1} is
 * written to qout (w->q keeps q_n) and the momentum buffer is updated.  With qfree, also
 * the step with g = 0 (the "free" step of the balance laws, rules.pyx _charges_before)
 * from the same state, written to qfree: the operations of _step_sgd with a zero
 * gradient, except that the products the two steps share (weight_decay * q_i,
 * buffer * momentum) are formed once -- a product depends only on its operands, so the
 * shared value is the one each step would have formed.  (Inlined, qfree = NULL folds the
 * free step away.)
 *
 * The general form evaluates every branch of _step_sgd and selects per lane.  When the
 * block's flags agree (the usual case: momentum, nesterov, dampening fixed, no first
 * step) the heavy-ball form below computes the same values directly: a select returns
 * one of its operands unchanged, and (1 - 0) * x is x exactly, so both are bitwise
 * equal.
 *
 * fuse (with qfree; a constant where inlined): the law's sums of one law on coordinates
 * 0 .. d - 1 in order (w->sym_all) are formed in this loop instead of in passes after it
 * -- T_n = sum_i (q^free_i - q_i) q_i into free_T[0], A_{n+1} = sum_i q_{n+1,i}^2 and
 * |Delta|^2 = sum_i (q_{n+1,i} - q_i)^2 into fz_a1, fz_dd -- each from +0, adding its
 * terms for i = 0, 1, ..., d - 1, the terms formed from the same values as the separate
 * passes form them (docs/balance_laws.md §8, (8.5)); q^free is then not stored. */
NC_INLINE void NCL(step_sgd)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                             double* restrict qfree_, double* restrict qout_, const int fuse)
{
    const nc_vd nlr = w->nlr, mom = w->mom, damp1 = w->damp1, wd = w->wd;
    const nc_vl wd_on = w->wd_on, mom_on = w->mom_on, nest = w->nest, first = w->first;
    const nc_vd* restrict q = NCCV(w->q);
    nc_vd* restrict buf = NCV(w->buf);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict qf = NCV(qfree_);
    nc_vd* restrict qout = NCV(qout_);
    const nc_vd zero = {0};
    nc_vd T = zero, a1 = zero, dd = zero;          /* (fuse) */
    if (w->heavy_ball && !w->any_first) {
        const int all_wd = w->all_wd;
        for (Py_ssize_t i = 0; i < d; ++i) {
            const nc_vd qi = q[i], wq = wd * qi, bm = buf[i] * mom;
            const nc_vd di = all_wd ? g[i] + wq : NCL(sel)(wd_on, g[i] + wq, g[i]);
            const nc_vd bn = bm + di;
            const nc_vd qo = qi + nlr * bn;
            if (qfree_ != NULL) {
                const nc_vd df = all_wd ? zero + wq : NCL(sel)(wd_on, zero + wq, zero);
                const nc_vd qfi = qi + nlr * (bm + df);
                if (fuse) {
                    const nc_vd x = qo - qi;
                    T = T + (qfi - qi) * qi;
                    a1 = a1 + qo * qo;
                    dd = dd + x * x;
                } else {
                    qf[i] = qfi;
                }
            }
            buf[i] = bn;
            qout[i] = qo;
        }
        if (fuse) {
            NCV(w->free_T)[0] = T;
            w->fz_a1 = a1;
            w->fz_dd = dd;
        }
        return;
    }
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd qi = q[i], wq = wd * qi, bm = buf[i] * mom;
        nc_vd di = NCL(sel)(wd_on, g[i] + wq, g[i]);
        const nc_vd bn = NCL(sel)(first, di, bm + damp1 * di);
        di = NCL(sel)(mom_on, NCL(sel)(nest, di + mom * bn, bn), di);
        const nc_vd qo = qi + nlr * di;
        if (qfree_ != NULL) {
            nc_vd df = NCL(sel)(wd_on, zero + wq, zero);
            const nc_vd bnf = NCL(sel)(first, df, bm + damp1 * df);
            df = NCL(sel)(mom_on, NCL(sel)(nest, df + mom * bnf, bnf), df);
            const nc_vd qfi = qi + nlr * df;
            if (fuse) {
                const nc_vd x = qo - qi;
                T = T + (qfi - qi) * qi;
                a1 = a1 + qo * qo;
                dd = dd + x * x;
            } else {
                qf[i] = qfi;
            }
        }
        buf[i] = NCL(sel)(mom_on, bn, buf[i]);
        qout[i] = qo;
    }
    if (fuse) {
        NCV(w->free_T)[0] = T;
        w->fz_a1 = a1;
        w->fz_dd = dd;
    }
    w->first = first & ~mom_on;
    w->any_first = NCL(any)(w->first);
}

/* sqrt of every lane: correctly rounded (IEEE), as the scalar code's sqrt */
NC_INLINE nc_vd NCL(vsqrt)(nc_vd x)
{
#if defined(__AVX512F__) && NC_NL == 8
    return (nc_vd) _mm512_sqrt_pd((__m512d) x);
#elif defined(__SSE2__) && (NC_NL % 2) == 0
    nc_vd r;
    for (int l = 0; l < NC_NL; l += 2) {
        const __m128d v = _mm_set_pd(x[l + 1], x[l]);
        const __m128d s = _mm_sqrt_pd(v);
        r[l] = _mm_cvtsd_f64(s);
        r[l + 1] = _mm_cvtsd_f64(_mm_unpackhi_pd(s, s));
    }
    return r;
#else
    nc_vd r;
    for (int l = 0; l < NC_NL; ++l) r[l] = sqrt(x[l]);
    return r;
#endif
}

/* torch.lerp(a, b, w) per lane (rules.pyx _lerp): a + w (b - a) where w < 0.5 (mask lo),
 * else b - (b - a)(1 - w), omw = 1 - w; lo_all: every lane has w < 0.5 */
NC_INLINE nc_vd NCL(lerp)(nc_vd a, nc_vd b, nc_vd wv, nc_vd omw, nc_vl lo, int lo_all)
{
    const nc_vd ba = b - a;
    if (lo_all) return a + wv * ba;
    return NCL(sel)(lo, a + wv * ba, b - ba * omw);
}

/* ---- the rule: _step_adam per lane ------------------------------------------------- */

/* num0/den0 and num1/den1 of every lane with one division (rules.pyx _pair_quot,
 * docs/balance_laws.md (8.3)): 1/den0 = den1 (1/(den0 den1)) and vice versa in the
 * lanes where 2^-1022 <= den0 den1 <= 2^1022, divided directly elsewhere. */
NC_INLINE void NCL(pair_quot)(nc_vd num0, nc_vd den0, nc_vd num1, nc_vd den1,
                              nc_vd* restrict f0, nc_vd* restrict f1)
{
    const nc_vd p = den0 * den1, ip = 1.0 / p;
    nc_vd a = num0 * (den1 * ip), b = num1 * (den0 * ip);
    const nc_vl ok = (p >= 0x1p-1022) & (p <= 0x1p1022);
    if (NCL(any)(~ok)) {
        a = NCL(sel)(ok, a, num0 / den0);
        b = NCL(sel)(ok, b, num1 / den1);
    }
    *f0 = a;
    *f1 = b;
}

/* q^free of the pair i0, i0 + 1 (K = 2) or of the last coordinate alone (K = 1):
 * qd_k + num_k/den_k, the quotients in a pair (NCL(pair_quot), (8.3)) */
NC_INLINE void NCL(free_pair)(const int K, const nc_vd* qd, const nc_vd* num,
                              const nc_vd* den, nc_vd* restrict qf)
{
    if (K == 2) {
        nc_vd f0, f1;
        NCL(pair_quot)(num[0], den[0], num[1], den[1], &f0, &f1);
        qf[0] = qd[0] + f0;
        qf[1] = qd[1] + f1;
    } else {
        qf[0] = qd[0] + num[0] / den[0];
    }
}

/* T_n's terms of those K coordinates, q = q_n from the first, added in order (8.5) */
NC_INLINE nc_vd NCL(pair_T)(nc_vd T, const int K, const nc_vd* restrict q,
                            const nc_vd* qf)
{
    for (int k = 0; k < K; ++k) T = T + (qf[k] - q[k]) * q[k];
    return T;
}

/* The free step's root, per block (docs/balance_laws.md §8, "One loop per form"): every
 * lane carried (NC_FREE_CARRIED: sqrt(beta2) or sqrt(alpha) times the carried root),
 * every lane direct (NC_FREE_DIRECT: the root of the free average) or some of each
 * (NC_FREE_MIXED: both, a select per lane); a constant where inlined. */
NC_INLINE nc_vd NCL(free_root)(const int form, const nc_vl direct, const nc_vd arg,
                               const nc_vd sroot, const nc_vd carried)
{
    if (form == NC_FREE_DIRECT) return NCL(vsqrt)(arg);
    if (form == NC_FREE_CARRIED) return sroot * carried;
    return NCL(sel)(direct, NCL(vsqrt)(arg), sroot * carried);
}

/* NCL(sel)(direct, a, b) in a loop of that form: a where every lane is direct (every lane
 * has the coupled decay that makes its root direct), so the select is left out */
NC_INLINE nc_vd NCL(sel_form)(const int form, const nc_vl direct, const nc_vd a,
                              const nc_vd b)
{
    return form == NC_FREE_DIRECT ? a : NCL(sel)(direct, a, b);
}

NC_INLINE int NCL(free_form)(const nc_vl direct)
{
    if (!NCL(any)(~direct)) return NC_FREE_DIRECT;
    return NCL(any)(direct) ? NC_FREE_MIXED : NC_FREE_CARRIED;
}

/* Adam's scalars of step n (rules.pyx _step_adam): step = s0 + n + 1, bc1 = 1 -
 * pow(beta1, step) and bc2 = 1 - pow(beta2, step) from the table (the same libm pow of
 * the same numbers), -step_size = -(lr / bc1) and bc2_sqrt = sqrt(bc2). */
NC_INLINE void NCL(adam_scalars)(const nc_lane_ctx* c, const nc_lane_ws* w, Py_ssize_t n,
                                 nc_vd* nss, nc_vd* bc2s)
{
    nc_vd p1, p2;
    for (int l = 0; l < NC_NL; ++l) {
        p1[l] = n < c->pow_len ? w->pw1[l][n] : 0.0;    /* libm's pow is 0 from there */
        p2[l] = n < c->pow_len ? w->pw2[l][n] : 0.0;
    }
    const nc_vd bc1 = 1.0 - p1, bc2 = 1.0 - p2;
    *nss = -(w->lr / bc1);                               /* (-step_size) */
    *bc2s = NCL(vsqrt)(bc2);
}

/* ---- the free denominators, formed during the gradient ------------------------------ */

/* The denominators of step n's free step -- NCL(step_rmsprop_plain)'s root_f + eps,
 * NCL(step_adam_plain)'s root_f (1/bc2_sqrt) + eps -- into w->f_den: the same operations
 * on the same operands (q_n and the state of step n, which the gradient leaves alone), so
 * the same bits, formed where the Rayleigh gradient calls this (after its first block of
 * rows) so that their square roots take the divider while it would idle
 * (docs/balance_laws.md §8, "During the gradient"). */
NC_INLINE void NCL(rms_free_dens)(const Py_ssize_t d, nc_lane_ws* w, const int form)
{
    const nc_vd wd = w->wd, alpha = w->b2, oma = w->omb2, eps = w->eps, sroot = w->sroot;
    const nc_vl wd_on = w->wd_on;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict sq = NCCV(w->buf);
    const nc_vd* restrict root = NCCV(w->v2);
    nc_vd* restrict den = NCV(w->f_den);
    const nc_vd zero = {0};
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd wq = wd * q[i], sqa = sq[i] * alpha;
        const nc_vd gf = NCL(sel_form)(form, wd_on, zero + wq, zero);
        den[i] = NCL(free_root)(form, wd_on, sqa + (oma * gf) * gf, sroot, root[i]) + eps;
    }
}

NC_INLINE void NCL(adam_free_dens)(const Py_ssize_t d, nc_lane_ws* w, const int form)
{
    const nc_vd wd = w->wd, b2 = w->b2, omb2 = w->omb2, eps = w->eps, sb2 = w->sroot,
                ibc2s = w->pre_ibc2s;
    const nc_vl coup = w->coup;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict m2 = NCCV(w->v1);
    const nc_vd* restrict root = NCCV(w->v2);
    nc_vd* restrict den = NCV(w->f_den);
    const nc_vd zero = {0};
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd wq = wd * q[i], m2b = m2[i] * b2;
        const nc_vd gf = NCL(sel_form)(form, coup, zero + wq, zero);
        const nc_vd rootf = NCL(free_root)(form, coup, m2b + (omb2 * gf) * gf, sb2, root[i]);
        den[i] = rootf * ibc2s + eps;
    }
}

NC_INLINE void NCL(free_dens)(const Py_ssize_t d, nc_lane_ws* w)
{
    /* (each call with a constant form: loops without branches) */
    if (w->free_pre == NC_PRE_RMSPROP) {
        const int form = w->form_wd;
        if (form == NC_FREE_DIRECT) NCL(rms_free_dens)(d, w, NC_FREE_DIRECT);
        else if (form == NC_FREE_MIXED) NCL(rms_free_dens)(d, w, NC_FREE_MIXED);
        else NCL(rms_free_dens)(d, w, NC_FREE_CARRIED);
    } else {
        const int form = w->form_coup;
        if (form == NC_FREE_DIRECT) NCL(adam_free_dens)(d, w, NC_FREE_DIRECT);
        else if (form == NC_FREE_MIXED) NCL(adam_free_dens)(d, w, NC_FREE_MIXED);
        else NCL(adam_free_dens)(d, w, NC_FREE_CARRIED);
    }
}

/* NCL(step_adam)'s charged, fused step for the usual block -- no lane with amsgrad, every
 * lane's lerp weight 1 - beta1 < 0.5 -- with the free step's root in one form
 * (NCL(free_root)) for the whole loop.  The operations, their operands and their order
 * are NCL(step_adam)'s for such a block, so every lane's bits are the same; the loop
 * body has no per-step branches, which NCL(step_adam)'s general loop keeps for the rare
 * flags (docs/balance_laws.md §8, "One loop per form").  pre: the free denominators are
 * in w->f_den already (NCL(free_dens)), and form only says whether every lane is direct
 * (NCL(sel_form)). */
NC_INLINE void NCL(step_adam_plain)(const Py_ssize_t d, nc_lane_ws* w, Py_ssize_t n,
                                    double* restrict qout_, const nc_vd nss,
                                    const nc_vd bc2s, const int form, const int pre)
{
    const nc_vd wd = w->wd, decay = w->decay, w1 = w->w1, b2 = w->b2, omb2 = w->omb2,
                eps = w->eps, sb2 = w->sroot;
    const nc_vl coup = w->coup, decp = w->decp;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict m1 = NCV(w->buf);
    nc_vd* restrict m2 = NCV(w->v1);
    nc_vd* restrict root = NCV(w->v2);         /* sqrt(exp_avg_sq), carried */
    nc_vd* restrict qout = NCV(qout_);
    const nc_vd* restrict fden = NCCV(w->f_den);
    const nc_vd zero = {0}, ibc2s = 1.0 / bc2s;
    nc_vd T = zero, a1 = zero, dd = zero;
    if (n == 0 && form != NC_FREE_DIRECT)       /* (the carried roots: read by no direct
                                                   lane, and a block keeps its form) */
        for (Py_ssize_t i = 0; i < d; ++i) root[i] = NCL(vsqrt)(m2[i]);
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 2) {
        nc_vd qdk[2], numk[2], denk[2];
        const int K = i0 + 1 < d ? 2 : 1;
        for (int k = 0; k < K; ++k) {
            const Py_ssize_t i = i0 + k;
            const nc_vd qi = q[i], wq = wd * qi, m1i = m1[i], m2i = m2[i], m2b = m2i * b2;
            const nc_vd gi = NCL(sel_form)(form, coup, g[i] + wq, g[i]);
            const nc_vd qd = NCL(sel)(decp, qi * decay, qi);
            const nc_vd m1n = m1i + w1 * (gi - m1i);            /* lerp, weight < 0.5 */
            const nc_vd m2n = m2b + (omb2 * gi) * gi;
            const nc_vd gf = NCL(sel_form)(form, coup, zero + wq, zero);
            const nc_vd m1f = m1i + w1 * (gf - m1i);
            qdk[k] = qd;
            numk[k] = nss * m1f;
            if (pre)
                denk[k] = fden[i];
            else
                denk[k] = NCL(free_root)(form, coup, m2b + (omb2 * gf) * gf, sb2, root[i])
                          * ibc2s + eps;
            const nc_vd rs = NCL(vsqrt)(m2n);
            if (form != NC_FREE_DIRECT) root[i] = rs;
            const nc_vd den = rs / bc2s + eps;
            m1[i] = m1n;
            m2[i] = m2n;
            const nc_vd qo = qd + (nss * m1n) / den;
            qout[i] = qo;
            const nc_vd x = qo - qi;
            a1 = a1 + qo * qo;
            dd = dd + x * x;
        }
        nc_vd qfp[2];
        NCL(free_pair)(K, qdk, numk, denk, qfp);
        T = NCL(pair_T)(T, K, q + i0, qfp);
    }
    NCV(w->free_T)[0] = T;
    w->fz_a1 = a1;
    w->fz_dd = dd;
}

/* One Adam/AdamW step of every lane (rules.pyx _step_adam, operation for operation) from
 * q_n = w->q with the gradient w->g into qout; buffers buf = exp_avg, v1 = exp_avg_sq,
 * v2 = max_exp_avg_sq updated.  The step's scalars: step = s0 + n + 1,
 * bc1 = 1 - pow(beta1, step) and bc2 = 1 - pow(beta2, step) from the table (the same
 * libm pow of the same numbers), step_size = lr / bc1, bc2_sqrt = sqrt(bc2).  Per-lane
 * branches are selects of operands (the coupled/decoupled decay, amsgrad's maximum and
 * the argument of the square root, the two forms of lerp), so one sqrt and two divisions
 * per coordinate, as in the scalar code.  With qfree, also the free step (g = 0, the
 * same state) into qfree as rules.pyx _step_adam_free forms it (docs/balance_laws.md
 * §8): numerator (-step_size) m1f, denominator root_f (1/bc2_sqrt) + eps with
 * root_f = sqrt(beta2) sqrt(exp_avg_sq) in the lanes without amsgrad or L2 decay (the
 * scalar code carries that root from its previous step, and so do the lanes, in v2, when
 * no lane of the block has amsgrad; else it is the same sqrt of the same number), else
 * the sqrt of the free (max) exp_avg_sq; sqrt(beta2) taken once per block (w->sroot);
 * the quotients in pairs (NCL(pair_quot)).  Coordinates are taken two at a time for the
 * pairs, the free quotients interleaved with the real step (measured faster here than
 * RMSprop's second pass: docs/balance_laws.md §8, "In the lanes"); each coordinate's
 * real step is unchanged.  fuse: the law's sums in this loop as in NCL(step_sgd), T_n's
 * terms added once a pair's quotients are formed, in the order i0, i0 + 1 (8.5).  A
 * fused step of a block with no amsgrad and every lerp weight < 0.5 runs
 * NCL(step_adam_plain) instead (the same operations). */
NC_INLINE void NCL(step_adam)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                              Py_ssize_t n, double* restrict qfree_, double* restrict qout_,
                              const int fuse)
{
    nc_vd nss, bc2s;
    if (w->free_pre == NC_PRE_ADAM) {          /* (formed before the gradient) */
        nss = w->pre_nss;
        bc2s = w->pre_bc2s;
    } else {
        NCL(adam_scalars)(c, w, n, &nss, &bc2s);
    }
    if (qfree_ != NULL && fuse && !w->ams_any && w->lo_all) {
        const int form = w->form_coup;                   /* (amsgrad: none) */
        /* (each call with constant form and pre: five loops without branches) */
        const int pre = w->free_pre == NC_PRE_ADAM;
        if (pre && form == NC_FREE_DIRECT)
            NCL(step_adam_plain)(d, w, n, qout_, nss, bc2s, NC_FREE_DIRECT, 1);
        else if (pre)                                   /* (some lanes carried) */
            NCL(step_adam_plain)(d, w, n, qout_, nss, bc2s, NC_FREE_MIXED, 1);
        else if (form == NC_FREE_DIRECT)
            NCL(step_adam_plain)(d, w, n, qout_, nss, bc2s, NC_FREE_DIRECT, 0);
        else if (form == NC_FREE_MIXED)
            NCL(step_adam_plain)(d, w, n, qout_, nss, bc2s, NC_FREE_MIXED, 0);
        else
            NCL(step_adam_plain)(d, w, n, qout_, nss, bc2s, NC_FREE_CARRIED, 0);
        return;
    }
    const nc_vd wd = w->wd, decay = w->decay, w1 = w->w1, omw1 = w->omw1, b2 = w->b2,
                omb2 = w->omb2, eps = w->eps;
    const nc_vl coup = w->coup, decp = w->decp, lo = w->lo, ams = w->ams;
    const int lo_all = w->lo_all, ams_any = w->ams_any;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict m1 = NCV(w->buf);
    nc_vd* restrict m2 = NCV(w->v1);
    nc_vd* restrict mx = NCV(w->v2);
    nc_vd* restrict qf = NCV(qfree_);
    nc_vd* restrict qout = NCV(qout_);
    const nc_vd zero = {0};
    nc_vd T = zero, a1 = zero, dd = zero;          /* (fuse) */
    nc_vd ibc2s = zero, sb2 = zero;
    const nc_vl direct = coup | ams;       /* lanes whose free root is taken directly */
    int any_direct = 0, all_direct = 0;
    /* without amsgrad in the block, v2 (max_exp_avg_sq) is free: it carries
       sqrt(exp_avg_sq) from one step to the next (filled at the block's first step) */
    const int carry = qfree_ != NULL && !ams_any;
    nc_vd* restrict root = NCV(w->v2);
    if (qfree_ != NULL) {
        ibc2s = 1.0 / bc2s;
        sb2 = w->sroot;
        any_direct = NCL(any)(direct);
        all_direct = !NCL(any)(~direct);
        if (carry && n == 0)
            for (Py_ssize_t i = 0; i < d; ++i) root[i] = NCL(vsqrt)(m2[i]);
    }
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 2) {
        nc_vd qdk[2] = {0}, numk[2] = {0}, denk[2] = {0};   /* set and read only when qfree_ != NULL */
        const int K = i0 + 1 < d ? 2 : 1;
        for (int k = 0; k < K; ++k) {
            const Py_ssize_t i = i0 + k;
            const nc_vd qi = q[i], wq = wd * qi, m1i = m1[i], m2i = m2[i], m2b = m2i * b2;
            const nc_vd gi = NCL(sel)(coup, g[i] + wq, g[i]);
            const nc_vd qd = NCL(sel)(decp, qi * decay, qi);
            const nc_vd m1n = NCL(lerp)(m1i, gi, w1, omw1, lo, lo_all);
            const nc_vd m2n = m2b + (omb2 * gi) * gi;
            nc_vd s = m2n;
            if (qfree_ != NULL) {
                const nc_vd gf = NCL(sel)(coup, zero + wq, zero);
                const nc_vd m1f = NCL(lerp)(m1i, gf, w1, omw1, lo, lo_all);
                nc_vd rootf = zero;
                if (!all_direct) rootf = sb2 * (carry ? root[i] : NCL(vsqrt)(m2i));
                if (any_direct) {
                    const nc_vd m2f = m2b + (omb2 * gf) * gf;
                    nc_vd sf = m2f;
                    if (ams_any) {
                        const nc_vd mxi = mx[i];
                        sf = NCL(sel)(ams, NCL(sel)((m2f > mxi) | (mxi != mxi), m2f, mxi),
                                      m2f);
                    }
                    rootf = all_direct ? NCL(vsqrt)(sf) : NCL(sel)(direct, NCL(vsqrt)(sf), rootf);
                }
                qdk[k] = qd;
                numk[k] = nss * m1f;
                denk[k] = rootf * ibc2s + eps;
            }
            if (ams_any) {
                const nc_vd mxi = mx[i];
                const nc_vd mxn = NCL(sel)((m2n > mxi) | (mxi != mxi), m2n, mxi);
                s = NCL(sel)(ams, mxn, m2n);
                mx[i] = NCL(sel)(ams, mxn, mxi);
            }
            const nc_vd rs = NCL(vsqrt)(s);
            if (carry) root[i] = rs;       /* (s = exp_avg_sq_{n+1}: no amsgrad) */
            const nc_vd den = rs / bc2s + eps;
            m1[i] = m1n;
            m2[i] = m2n;
            const nc_vd qo = qd + (nss * m1n) / den;
            qout[i] = qo;
            if (fuse) {
                const nc_vd x = qo - qi;
                a1 = a1 + qo * qo;
                dd = dd + x * x;
            }
        }
        if (qfree_ != NULL) {
            nc_vd qfp[2];
            NCL(free_pair)(K, qdk, numk, denk, qfp);
            if (fuse) {
                T = NCL(pair_T)(T, K, q + i0, qfp);
            } else {
                qf[i0] = qfp[0];
                if (K == 2) qf[i0 + 1] = qfp[1];
            }
        }
    }
    if (fuse) {
        NCV(w->free_T)[0] = T;
        w->fz_a1 = a1;
        w->fz_dd = dd;
    }
}

/* ---- the rule: _step_rmsprop per lane ---------------------------------------------- */

/* NCL(step_rmsprop)'s charged, fused step for the usual block -- no lane centered, no
 * lane with momentum -- with the free step's root in one form (NCL(free_root)) for the
 * whole loop, and the pair quotients right after each pair's real steps instead of in a
 * second pass.  The operations, their operands and their order (T_n's terms in the
 * order i = 0, 1, ...) are NCL(step_rmsprop)'s for such a block, so every lane's bits
 * are the same; the loop body has no per-step branches and keeps the free step's pieces
 * in registers (docs/balance_laws.md §8, "One loop per form").  pre: the free
 * denominators are in w->f_den already (NCL(free_dens)), and form only says whether
 * every lane is direct (NCL(sel_form)). */
NC_INLINE void NCL(step_rmsprop_plain)(const Py_ssize_t d, nc_lane_ws* w, Py_ssize_t n,
                                       double* restrict qout_, const int form, const int pre)
{
    const nc_vd nlr = w->nlr, wd = w->wd, alpha = w->b2, oma = w->omb2, eps = w->eps,
                sroot = w->sroot;
    const nc_vl wd_on = w->wd_on;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict sq = NCV(w->buf);
    nc_vd* restrict root = NCV(w->v2);         /* sqrt(square_avg), carried */
    nc_vd* restrict qout = NCV(qout_);
    const nc_vd* restrict fden = NCCV(w->f_den);
    const nc_vd zero = {0};
    nc_vd T = zero, a1 = zero, dd = zero;
    if (n == 0 && form != NC_FREE_DIRECT)       /* (as in NCL(step_adam_plain)) */
        for (Py_ssize_t i = 0; i < d; ++i) root[i] = NCL(vsqrt)(sq[i]);
    for (Py_ssize_t i0 = 0; i0 < d; i0 += 2) {
        nc_vd num[2], den[2];
        const int K = i0 + 1 < d ? 2 : 1;
        for (int k = 0; k < K; ++k) {
            const Py_ssize_t i = i0 + k;
            const nc_vd qi = q[i], wq = wd * qi, sqa = sq[i] * alpha;
            const nc_vd gi = NCL(sel_form)(form, wd_on, g[i] + wq, g[i]);
            const nc_vd sqn = sqa + (oma * gi) * gi;
            const nc_vd rt = NCL(vsqrt)(sqn);
            const nc_vd qn = qi + (nlr * gi) / (rt + eps);
            const nc_vd gf = NCL(sel_form)(form, wd_on, zero + wq, zero);
            if (pre)
                den[k] = fden[i];
            else
                den[k] = NCL(free_root)(form, wd_on, sqa + (oma * gf) * gf, sroot, root[i])
                         + eps;
            num[k] = nlr * gf;
            if (form != NC_FREE_DIRECT) root[i] = rt;
            sq[i] = sqn;
            qout[i] = qn;
            const nc_vd x = qn - qi;
            a1 = a1 + qn * qn;
            dd = dd + x * x;
        }
        nc_vd qfp[2];
        NCL(free_pair)(K, q + i0, num, den, qfp);        /* q^free = q_n + quotient */
        T = NCL(pair_T)(T, K, q + i0, qfp);
    }
    NCV(w->free_T)[0] = T;
    w->fz_a1 = a1;
    w->fz_dd = dd;
}

/* One RMSprop step of every lane (rules.pyx _step_rmsprop) from q_n = w->q into qout;
 * buffers buf = square_avg, v1 = momentum_buffer, v2 = grad_avg.  The per-lane branches
 * (centered, momentum > 0) select operands: the argument of the square root
 * (sq - ga^2 or sq) and the numerator of the one division (g, with momentum, or -lr g),
 * then the new q of either form; so one sqrt and one division per coordinate.  With
 * qfree, also the free step (g = 0) into qfree as rules.pyx _step_rmsprop_free forms it
 * (docs/balance_laws.md §8): the free root sqrt(alpha) sqrt(square_avg) in the lanes
 * without weight decay or centering (carried in v2 when no lane of the block is
 * centered, else the same sqrt of the same number), else the sqrt of the free average;
 * the quotients in pairs (NCL(pair_quot)); the products square_avg alpha,
 * momentum_buffer momentum and wd q_i shared with the step; sqrt(alpha) taken once per
 * block (w->sroot).  Two passes: the real step with the free step's root beside each real
 * one and its other pieces but the division (kept in qf and w->f_num, f_den), then the
 * pair quotients (docs/balance_laws.md §8, "In the lanes", and "The L2 cases on Zen 5":
 * the free roots beside the real ones measured faster than after them).  fuse: the law's
 * sums as in NCL(step_sgd), A_{n+1} and |Delta|^2 in the first pass, T_n in the second,
 * in the order i = 0, 1, ... (8.5).  A fused step of a block with no lane centered and
 * none with momentum runs NCL(step_rmsprop_plain) instead (the same operations). */
NC_INLINE void NCL(step_rmsprop)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                                 Py_ssize_t n, double* restrict qfree_,
                                 double* restrict qout_, const int fuse)
{
    if (qfree_ != NULL && fuse && !w->cen_any && w->mom_none) {
        const int form = w->form_wd;                     /* (centered: none) */
        /* (each call with constant form and pre: five loops without branches) */
        const int pre = w->free_pre == NC_PRE_RMSPROP;
        if (pre && form == NC_FREE_DIRECT)
            NCL(step_rmsprop_plain)(d, w, n, qout_, NC_FREE_DIRECT, 1);
        else if (pre)                                   /* (some lanes carried) */
            NCL(step_rmsprop_plain)(d, w, n, qout_, NC_FREE_MIXED, 1);
        else if (form == NC_FREE_DIRECT)
            NCL(step_rmsprop_plain)(d, w, n, qout_, NC_FREE_DIRECT, 0);
        else if (form == NC_FREE_MIXED)
            NCL(step_rmsprop_plain)(d, w, n, qout_, NC_FREE_MIXED, 0);
        else
            NCL(step_rmsprop_plain)(d, w, n, qout_, NC_FREE_CARRIED, 0);
        return;
    }
    const nc_vd nlr = w->nlr, wd = w->wd, alpha = w->b2, oma = w->omb2, wl = w->w1,
                omwl = w->omw1, eps = w->eps, mom = w->mom;
    const nc_vl wd_on = w->wd_on, lo = w->lo, cen = w->cen, mom_on = w->mom_on;
    const int lo_all = w->lo_all, cen_any = w->cen_any, mom_all = w->mom_all,
              mom_none = w->mom_none;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict sq = NCV(w->buf);
    nc_vd* restrict mb = NCV(w->v1);
    nc_vd* restrict ga = NCV(w->v2);
    nc_vd* restrict qf = NCV(qfree_);
    nc_vd* restrict qout = NCV(qout_);
    nc_vd* restrict fnum = NCV(w->f_num);
    nc_vd* restrict fden = NCV(w->f_den);
    const nc_vd zero = {0}, sroot = w->sroot;
    nc_vd T = zero, a1 = zero, dd = zero;          /* (fuse) */
    const nc_vl direct = wd_on | cen;      /* lanes whose free root is taken directly */
    int any_direct = 0, all_direct = 0;
    const int carry = qfree_ != NULL && !cen_any;    /* v2 (grad_avg) unused: the root */
    nc_vd* restrict root = NCV(w->v2);
    (void) c;
    if (qfree_ != NULL) {
        any_direct = NCL(any)(direct);
        all_direct = !NCL(any)(~direct);
        if (carry && n == 0)
            for (Py_ssize_t i = 0; i < d; ++i) root[i] = NCL(vsqrt)(sq[i]);
    }
    /* the real step; the free step's pieces but its division kept for the second pass
       (buffer x momentum in qf, the numerator, the denominator: the carried root
       sqrt(alpha) sqrt(square_avg_i), or the direct root taken right after the real
       one, + eps) */
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd qi = q[i], wq = wd * qi, sqi = sq[i], sqa = sqi * alpha;
        const nc_vd gi = NCL(sel)(wd_on, g[i] + wq, g[i]);
        const nc_vd sqn = sqa + (oma * gi) * gi;
        nc_vd arg = sqn;
        nc_vd gai = zero;
        if (cen_any) {
            gai = ga[i];
            const nc_vd gan = NCL(lerp)(gai, gi, wl, omwl, lo, lo_all);
            arg = NCL(sel)(cen, sqn + (-1.0 * gan) * gan, sqn);
            ga[i] = NCL(sel)(cen, gan, gai);
        }
        const nc_vd rt = NCL(vsqrt)(arg);
        const nc_vd avg = rt + eps;
        const nc_vd bm = mb[i] * mom;
        nc_vd qn;
        if (mom_all) {
            const nc_vd bn = bm + gi / avg;
            mb[i] = bn;
            qn = qi + nlr * bn;
        } else if (mom_none) {
            qn = qi + (nlr * gi) / avg;
        } else {
            const nc_vd r = NCL(sel)(mom_on, gi, nlr * gi) / avg;
            const nc_vd bn = bm + r;
            mb[i] = NCL(sel)(mom_on, bn, mb[i]);
            qn = NCL(sel)(mom_on, qi + nlr * bn, qi + r);
        }
        if (qfree_ != NULL) {
            const nc_vd gf = NCL(sel)(wd_on, zero + wq, zero);
            nc_vd rootf = zero;
            if (!all_direct) rootf = sroot * (carry ? root[i] : NCL(vsqrt)(sqi));
            if (any_direct) {
                const nc_vd sqf = sqa + (oma * gf) * gf;
                nc_vd argf = sqf;
                if (cen_any) {
                    const nc_vd gaf = NCL(lerp)(gai, gf, wl, omwl, lo, lo_all);
                    argf = NCL(sel)(cen, sqf + (-1.0 * gaf) * gaf, sqf);
                }
                rootf = all_direct ? NCL(vsqrt)(argf)
                                   : NCL(sel)(direct, NCL(vsqrt)(argf), rootf);
            }
            fden[i] = rootf + eps;
            qf[i] = bm;
            fnum[i] = NCL(sel)(mom_on, gf, nlr * gf);
            if (carry) root[i] = rt;       /* (arg = square_avg_{n+1}: not centered) */
        }
        sq[i] = sqn;
        qout[i] = qn;
        if (fuse) {
            const nc_vd x = qn - qi;
            a1 = a1 + qn * qn;
            dd = dd + x * x;
        }
    }
    if (qfree_ == NULL) return;
    Py_ssize_t i0 = 0;
    for (; i0 < d; i0 += 2) {
        nc_vd f[2];
        const int K = i0 + 1 < d ? 2 : 1;
        if (K == 2) NCL(pair_quot)(fnum[i0], fden[i0], fnum[i0 + 1], fden[i0 + 1], &f[0], &f[1]);
        else f[0] = fnum[i0] / fden[i0];
        for (int k = 0; k < K; ++k) {
            const nc_vd qk = q[i0 + k];
            const nc_vd qfk = NCL(sel)(mom_on, qk + nlr * (qf[i0 + k] + f[k]), qk + f[k]);
            if (fuse) T = T + (qfk - qk) * qk;
            else qf[i0 + k] = qfk;
        }
    }
    if (fuse) {
        NCV(w->free_T)[0] = T;
        w->fz_a1 = a1;
        w->fz_dd = dd;
    }
}

/* ---- the rule: _step_scalar_rmsprop per lane ---------------------------------------- */

/* |d_P|^2 of part p, d = g + wd q where wd != 0 (rules.pyx _part_norm2: from +0, in the
 * partition's order) */
NC_INLINE nc_vd NCL(part_norm2)(const nc_lane_ctx* c, const nc_lane_ws* w, Py_ssize_t p)
{
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd n2 = {0};
    for (Py_ssize_t k = c->pptr[p]; k < c->pptr[p + 1]; ++k) {
        const Py_ssize_t i = c->pidx[k];
        const nc_vd gi = NCL(sel)(w->wd_on, g[i] + w->wd * q[i], g[i]);
        n2 = n2 + gi * gi;
    }
    return n2;
}

/* G of the lanes that have not started (rules.pyx _init_scalar_rmsprop, run by run_loop
 * before the step where initialised = 0): G0, or |d_P|^2 of this step where G0 is NaN */
NC_INLINE void NCL(init_srms)(const nc_lane_ctx* c, nc_lane_ws* w)
{
    nc_vd* G = NCV(w->G);
    const nc_vl nan0 = w->G0 != w->G0;
    for (Py_ssize_t p = 0; p < c->npart; ++p)
        G[p] = NCL(sel)(w->first, NCL(sel)(nan0, NCL(part_norm2)(c, w, p), w->G0), G[p]);
    w->first = (nc_vl) {0};
    w->any_first = 0;
}

/* One ScalarRMSProp step of every lane (rules.pyx _step_scalar_rmsprop): per part P,
 * scale = lr / sqrt(G_P + eps), q_i - scale d_i over P in order with |q_P|^2 summed from
 * +0, then q_P / |q_P| where P < nproj and |q_P|^2 > 0 (a select of the quotient), then
 * G_P <- rho G_P + (1 - rho) |d_P|^2.  With qfree, also the free step (g = 0: d = 0 + wd q
 * or +0) from the same state, G unchanged. */
NC_INLINE void NCL(step_srms)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                              double* restrict qfree_, double* restrict qout_)
{
    const nc_vd lr = w->lr, eps = w->eps, wd = w->wd, rho = w->b2, omrho = w->omrho,
                nproj = w->nproj;
    const nc_vl wd_on = w->wd_on;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    nc_vd* restrict qf = NCV(qfree_);
    nc_vd* restrict qout = NCV(qout_);
    nc_vd* G = NCV(w->G);
    const nc_vd zero = {0};
    (void) d;
    for (Py_ssize_t p = 0; p < c->npart; ++p) {
        const Py_ssize_t k0 = c->pptr[p], k1 = c->pptr[p + 1];
        const nc_vd n2 = NCL(part_norm2)(c, w, p);
        const nc_vd scale = lr / NCL(vsqrt)(G[p] + eps);
        nc_vd norm2 = {0}, norm2f = {0};
        for (Py_ssize_t k = k0; k < k1; ++k) {
            const Py_ssize_t i = c->pidx[k];
            const nc_vd qi = q[i], wq = wd * qi;
            const nc_vd gi = NCL(sel)(wd_on, g[i] + wq, g[i]);
            const nc_vd qn = qi - scale * gi;
            qout[i] = qn;
            norm2 = norm2 + qn * qn;
            if (qfree_ != NULL) {
                const nc_vd gf = NCL(sel)(wd_on, zero + wq, zero);
                const nc_vd qfi = qi - scale * gf;
                qf[i] = qfi;
                norm2f = norm2f + qfi * qfi;
            }
        }
        const nc_vd pv = zero + (double) p;
        const nc_vl proj = (pv < nproj) & (norm2 > 0.0);
        if (NCL(any)(proj)) {
            const nc_vd nrm = NCL(vsqrt)(norm2);
            for (Py_ssize_t k = k0; k < k1; ++k) {
                const Py_ssize_t i = c->pidx[k];
                qout[i] = NCL(sel)(proj, qout[i] / nrm, qout[i]);
            }
        }
        if (qfree_ != NULL) {
            const nc_vl projf = (pv < nproj) & (norm2f > 0.0);
            if (NCL(any)(projf)) {
                const nc_vd nrm = NCL(vsqrt)(norm2f);
                for (Py_ssize_t k = k0; k < k1; ++k) {
                    const Py_ssize_t i = c->pidx[k];
                    qf[i] = NCL(sel)(projf, qf[i] / nrm, qf[i]);
                }
            }
        }
        G[p] = rho * G[p] + omrho * n2;
    }
}

/* ---- the rule: _step_mirror per lane ----------------------------------------------- */

/* q_{n+1} of one lane and coordinate under a nonlinear map (rules.pyx _step_mirror,
 * statement for statement, with the same libm pow / exp): pnorm (kind 2) maps q to
 * y = sign(q) |q|^(p-1), steps y - lr d and maps back; entropy (kind 3) is q exp(-lr d) */
static inline double NCL(mirror_nl)(int kind, double qi, double di, double lr, double pm1,
                                    double ipm1)
{
    if (kind == 2) {
        double a = fabs(qi), y = pow(a, pm1);
        if (qi < 0.0) y = -y;
        y = y - lr * di;
        a = pow(fabs(y), ipm1);
        return y < 0.0 ? -a : a;
    }
    return qi * exp((-lr) * di);
}

/* One MirrorDescent step of every lane (rules.pyx _step_mirror) from q_n = w->q with the
 * gradient w->g into qout: d = g + wd q (a select on wd != 0), then per map
 * q - lr d (euclidean), q - (lr d)/D (diagonal, D in buf; selected per lane), and for the
 * lanes with pnorm or entropy maps the scalar statements of NCL(mirror_nl) per lane and
 * coordinate (d kept in v1).  With qfree, the free step (g = 0: d = 0 + wd q or +0) from
 * the same state into qfree, as _charges_before's copy-and-step forms it (d in v2).
 * Mirror descent keeps no state, so the step and its free step share only wd q. */
NC_INLINE void NCL(step_mirror)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                                double* restrict qfree_, double* restrict qout_)
{
    const nc_vd lr = w->lr, wd = w->wd;
    const nc_vl wd_on = w->wd_on, diag = w->mdiag;
    const int diag_any = w->m_diag_any, nl_any = w->m_nl_any;
    const nc_vd* restrict q = NCCV(w->q);
    const nc_vd* restrict g = NCCV(w->g);
    const nc_vd* restrict D = NCCV(w->buf);
    nc_vd* restrict dv = NCV(w->v1);
    nc_vd* restrict dfv = NCV(w->v2);
    nc_vd* restrict qf = NCV(qfree_);
    nc_vd* restrict qout = NCV(qout_);
    const nc_vd zero = {0};
    (void) c;
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nc_vd qi = q[i], wq = wd * qi;
        const nc_vd di = NCL(sel)(wd_on, g[i] + wq, g[i]);
        const nc_vd ld = lr * di;
        nc_vd qn = qi - ld;
        if (diag_any) qn = NCL(sel)(diag, qi - ld / D[i], qn);
        qout[i] = qn;
        if (nl_any) dv[i] = di;
        if (qfree_ != NULL) {
            const nc_vd df = NCL(sel)(wd_on, zero + wq, zero);
            const nc_vd lf = lr * df;
            nc_vd qfi = qi - lf;
            if (diag_any) qfi = NCL(sel)(diag, qi - lf / D[i], qfi);
            qf[i] = qfi;
            if (nl_any) dfv[i] = df;
        }
    }
    if (!nl_any) return;
    /* the lanes with a nonlinear map, one scalar at a time (every access through the
       pointers above, so that restrict holds) */
    const double* restrict qs = (const double*) q;
    const double* restrict ds = (const double*) dv;
    const double* restrict dfs = (const double*) dfv;
    for (int l = 0; l < NC_NL; ++l) {
        const int kind = w->mkind[l];
        if (kind < 2) continue;
        const double lrl = w->lr[l], pm1 = w->mpm1[l], ipm1 = w->mipm1[l];
        for (Py_ssize_t i = 0; i < d; ++i) {
            const Py_ssize_t k = i * NC_NL + l;
            qout_[k] = NCL(mirror_nl)(kind, qs[k], ds[k], lrl, pm1, ipm1);
            if (qfree_ != NULL)
                qfree_[k] = NCL(mirror_nl)(kind, qs[k], dfs[k], lrl, pm1, ipm1);
        }
    }
}

/* grad h(x) of lane l's map at coordinate i (rules.pyx _mirror_grad): x, D_i x,
 * sign(x) |x|^(p-1), 1 + log x */
static inline double NCL(mirror_grad)(const nc_lane_ws* w, int l, Py_ssize_t i, double x)
{
    const int kind = w->mkind[l];
    if (kind == 0) return x;
    if (kind == 1) return w->buf[i * NC_NL + l] * x;
    if (kind == 2) {
        const double a = pow(fabs(x), w->mpm1[l]);
        return x < 0.0 ? -a : a;
    }
    return 1.0 + log(x);
}

/* After the swap (q = q_{n+1}, qn = q_n, q_free the free step): each tracked scale law
 * of mirror descent (rules.pyx _mirror_law, docs/balance_laws.md (4.1)):
 * R = sum_B (grad h(q_{n+1}) - grad h(q_free))_i xi_i and its scale
 * sc = sum_B (|.| + |.|) |xi_i|, xi = q_n on the block, summed in block order from +0;
 * rel = |R|/sc (0 or 1 where sc = 0, 1 where NaN) folded into the lanes' worst values.
 * grad h per lane and coordinate, scalar (libm pow / log as the scalar code calls them);
 * the metric term the scalar loop also forms is not an output of a scan. */
static void NCL(mirror_laws)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t n)
{
    const double* q1 = w->q;
    const double* q0 = w->qn;
    const double* qf = w->q_free;
    for (Py_ssize_t j = 0; j < c->nsym; ++j) {
        for (int l = 0; l < NC_NL; ++l) {
            if (!w->alive[l]) continue;
            double R = 0.0, sc = 0.0, rel;
            for (Py_ssize_t k = c->sptr[j]; k < c->sptr[j + 1]; ++k) {
                const Py_ssize_t i = c->sidx[k];
                const double xi = q0[i * NC_NL + l];
                const double a1 = NCL(mirror_grad)(w, l, i, q1[i * NC_NL + l]);
                const double af = NCL(mirror_grad)(w, l, i, qf[i * NC_NL + l]);
                R = R + (a1 - af) * xi;
                sc = sc + (fabs(a1) + fabs(af)) * fabs(xi);
            }
            if (sc > 0.0) rel = fabs(R) / sc;
            else rel = R == 0.0 ? 0.0 : 1.0;
            if (rel != rel) rel = 1.0;
            if (rel > w->worst[j * NC_NL + l]) {
                w->worst[j * NC_NL + l] = rel;
                w->wstep[j * NC_NL + l] = n;
            }
        }
    }
}

/* 1 if the rule's step can form the law's sums in its own loop (the fused path of
   NCL(step_with_free); ScalarRMSProp projects q_{n+1} after its loop, and MirrorDescent's
   laws are not the scale sums) */
NC_INLINE int NCL(fusable)(const int rule)
{
    return rule == NC_LRULE_SGD || rule == NC_LRULE_ADAM || rule == NC_LRULE_RMSPROP;
}

/* the rule's step of every lane (rule: NC_LRULE_*, a constant where inlined; fuse: a
   constant, only for a fusable rule with qfree) */
NC_INLINE void NCL(step)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                         Py_ssize_t n, const int rule, double* qfree, double* qout,
                         const int fuse)
{
    if (rule == NC_LRULE_ADAM)
        NCL(step_adam)(c, d, w, n, qfree, qout, fuse);
    else if (rule == NC_LRULE_SRMS)
        NCL(step_srms)(c, d, w, qfree, qout);
    else if (rule == NC_LRULE_RMSPROP)
        NCL(step_rmsprop)(c, d, w, n, qfree, qout, fuse);
    else if (rule == NC_LRULE_MIRROR)
        NCL(step_mirror)(c, d, w, qfree, qout);
    else
        NCL(step_sgd)(c, d, w, qfree, qout, fuse);
}

static void NCL(grad)(const nc_lane_ctx* c, nc_lane_ws* w)
{
    NCL(grad_d)(c, w, c->d, NULL);
}

/* the loss and gradient of state n at a step of the loop: on the step's drawn rows in a
 * minibatch scan, else on the full data (the terminal state always uses the full data,
 * NCL(grad), as run_loop's terminal row does) */
NC_INLINE void NCL(grad_step)(const nc_lane_ctx* c, nc_lane_ws* w, const Py_ssize_t d,
                              const int have_a1)
{
    if (c->batch > 0 && w->mom_cur != NULL) {       /* batch_form="moments" */
        const double* M = w->mom_cur;
        w->mom_cur += c->mom_len;
        w->f = NCL(grad_bn_unit_mom)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux), M);
    } else if (c->batch > 0 && w->shared) {
        const unsigned int* rows = NCL(draw_shared)(c, w);
        w->f = NCL(grad_bn_unit_sh)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux), rows);
    } else if (c->batch > 0) {
        NCL(draw_batch)(c, w, d);
        w->f = NCL(grad_bn_unit_mb)(c, d, NCCV(w->q), NCV(w->g), NCV(w->aux),
                                    NCCV(w->xb), NCCV(w->yb));
    } else {
        /* have_a1: w->fz_a1 is |q_n|^2 summed from +0 in order by the fused step n - 1,
           bitwise the Rayleigh gradient's |q|^2 (8.6) */
        NCL(grad_d)(c, w, d, have_a1 ? &w->fz_a1 : NULL);
    }
}

/* ---- summaries --------------------------------------------------------------------- */

/* out[b] = |x_B|^2 of every block, summed in block order (rules.pyx _block_sq) */
NC_INLINE void NCL(block_sq)(const nc_lane_ctx* c, const nc_vd* restrict x,
                                 nc_vd* restrict out)
{
    for (Py_ssize_t b = 0; b < c->nb; ++b) {
        nc_vd acc = {0};
        for (Py_ssize_t k = c->bptr[b]; k < c->bptr[b + 1]; ++k) {
            const nc_vd v = x[c->bidx[k]];
            acc = acc + v * v;
        }
        out[b] = acc;
    }
}

/* the queued states' angle terms (NCL(take_angle)), added to ang_sum in step order */
static void NCL(angle_flush)(const nc_lane_ctx* c, nc_lane_ws* w);

/* Angular-update summaries (scan.pyx _take_state / _chord2): state n >= late_start is
 * queued in w->ang_q, and NCL(angle_flush) adds the squared chords of the transitions into
 * the queued states once ang_K of them wait, or before a lane's row is written
 * (finish_lane).  The squared chord into state n > late_start is |u - v|^2 with
 * u = q_{n-1,B}/|q_{n-1,B}|, v = q_{n,B}/|q_{n,B}|, 1/|q_B| = 1/sqrt(|q_B|^2), |q_B|^2
 * summed in block order: the scalar code's operations; queueing changes only when they
 * run, and ang_sum still receives the terms in step order. */
NC_INLINE void NCL(take_angle)(const nc_lane_ctx* c, const Py_ssize_t d, nc_lane_ws* w,
                               Py_ssize_t n)
{
    if (n < c->late_start || c->nb == 0) return;
    nc_vd* restrict slot = NCV(w->ang_q) + (size_t) w->ang_np * d;
    const nc_vd* restrict q = NCCV(w->q);
    for (Py_ssize_t i = 0; i < d; ++i) slot[i] = q[i];
    if (++w->ang_np == w->ang_K) NCL(angle_flush)(c, w);
}

static void NCL(angle_flush)(const nc_lane_ctx* c, nc_lane_ws* w)
{
    const int np = w->ang_np;
    if (np == 0) return;
    const Py_ssize_t d = c->d, nb = c->nb, nnz = c->bptr[nb];
    const nc_vd* qs = NCCV(w->ang_q);
    nc_vd* inv = NCV(w->ang_inv);
    nc_vd* V = NCV(w->ang_v);            /* row 0: the state before the batch; k + 1: state k */
    nc_vd* M = NCV(w->ang_m);
    nc_vd* ang = NCV(w->ang_sum);
    /* 1/|q_B| of every queued state (independent sums) */
    for (int k = 0; k < np; ++k) NCL(block_sq)(c, qs + k * d, inv + k * nb);
    for (Py_ssize_t e = 0; e < np * nb; ++e)
        for (int l = 0; l < NC_NL; ++l) inv[e][l] = 1.0 / sqrt(inv[e][l]);
    /* the normalised block vectors, entry by entry: v = q_i * (1/|q_B|), the scalar
       code's u of the next transition and v of this one (the same product) */
    for (int k = 0; k < np; ++k) {
        const nc_vd* q = qs + k * d;
        nc_vd* v = V + (k + 1) * nnz;
        for (Py_ssize_t b = 0; b < nb; ++b) {
            const nc_vd ib = inv[k * nb + b];
            for (Py_ssize_t kk = c->bptr[b]; kk < c->bptr[b + 1]; ++kk)
                v[kk] = q[c->bidx[kk]] * ib;
        }
    }
    /* |u - v|^2 of every transition into a queued state */
    const int k0 = w->ang_prev ? 0 : 1;
    for (int k = k0; k < np; ++k) {
        const nc_vd* u = V + k * nnz;
        const nc_vd* v = V + (k + 1) * nnz;
        for (Py_ssize_t b = 0; b < nb; ++b) {
            nc_vd dm = {0};
            for (Py_ssize_t kk = c->bptr[b]; kk < c->bptr[b + 1]; ++kk)
                dm = dm + (u[kk] - v[kk]) * (u[kk] - v[kk]);
            M[k * nb + b] = dm;
        }
    }
    for (int k = k0; k < np; ++k)
        for (Py_ssize_t b = 0; b < nb; ++b) ang[b] = ang[b] + M[k * nb + b];
    /* the last queued state precedes the next batch */
    memcpy(V, V + np * nnz, (size_t) nnz * sizeof(nc_vd));
    w->ang_prev = 1;
    w->ang_np = 0;
}

/* row n / rec_every of point p's series: state n of lane l (q_n from qsrc, f_n and the
 * gradient g_n in w->g), as scan.pyx _take_state records run_loop's row: |g|^2 summed over
 * i in order, |q_B|^2 block by block in order (rules.pyx _grad_checked, _block_sq) */
static void NCL(record_row)(const nc_lane_ctx* c, nc_lane_ws* w, int l, Py_ssize_t p,
                            Py_ssize_t n, double f, const double* qsrc)
{
    const Py_ssize_t d = c->d, r = n / c->rec_every, R = c->rec_rows;
    p = nc_lane_task(c, p);                             /* slot -> task */
    if (p < 0 || r >= R) return;                        /* (a padding lane) */
    double g2 = 0.0;
    for (Py_ssize_t i = 0; i < d; ++i) {
        const double gi = w->g[i * NC_NL + l];
        g2 = g2 + gi * gi;
    }
    double* qrow = c->s_q + (p * R + r) * d;
    for (Py_ssize_t i = 0; i < d; ++i) qrow[i] = qsrc[i * NC_NL + l];
    c->s_loss[p * R + r] = f;
    c->s_g2[p * R + r] = g2;
    for (Py_ssize_t b = 0; b < c->nb; ++b) {
        double acc = 0.0;
        for (Py_ssize_t k = c->bptr[b]; k < c->bptr[b + 1]; ++k) {
            const double x = qsrc[c->bidx[k] * NC_NL + l];
            acc = acc + x * x;
        }
        c->s_bn2[(p * R + r) * c->nb + b] = acc;
    }
    w->n_rows[l] = r + 1;
}

/* write lane l's output row (point p; its final state is lane l of qsrc) and retire
 * the lane */
static void NCL(finish_lane)(const nc_lane_ctx* c, nc_lane_ws* w, int l, Py_ssize_t p,
                             int status, Py_ssize_t stop, double loss_final,
                             const double* qsrc)
{
    const Py_ssize_t d = c->d;
    NCL(angle_flush)(c, w);                     /* ang_sum complete up to this state */
    w->alive[l] = 0;
    p = nc_lane_task(c, p);                             /* slot -> task */
    if (p >= 0) {                                       /* (not a padding lane) */
        for (Py_ssize_t i = 0; i < d; ++i) c->q_final[p * d + i] = qsrc[i * NC_NL + l];
        for (Py_ssize_t b = 0; b < c->nb; ++b) {
            double acc = 0.0;
            for (Py_ssize_t k = c->bptr[b]; k < c->bptr[b + 1]; ++k) {
                const double x = qsrc[c->bidx[k] * NC_NL + l];
                acc = acc + x * x;
            }
            c->bn2_final[p * c->nb + b] = acc;
            c->angle[p * c->nb + b] = (status == NC_ST_OK && w->ang_cnt > 0)
                ? sqrt(w->ang_sum[b * NC_NL + l] / (double) w->ang_cnt) : NAN;
        }
        c->loss_final[p] = status == NC_ST_OK ? loss_final : NAN;
        c->loss_min[p] = w->loss_min[l] < INFINITY ? w->loss_min[l] : NAN;
        c->status[p] = status;
        c->stop[p] = stop;
        if (c->rec_every > 0) c->n_rows[p] = w->n_rows[l];
        for (Py_ssize_t j = 0; j < c->nsym; ++j) {
            c->worst[p * c->nsym + j] = w->worst[j * NC_NL + l];
            c->worst_step[p * c->nsym + j] = w->wstep[j * NC_NL + l];
        }
    }
    /* the retired lane idles at q0 with lr = 0: it keeps computing (SIMD) but on
       harmless numbers (no NaN, inf or subnormal slow paths).  Its gradient is zeroed
       too: a lane retired on its loss still takes this step's update, which must not
       read the bad gradient (0 * NaN is NaN). */
    for (Py_ssize_t i = 0; i < d; ++i) {
        w->q[i * NC_NL + l] = c->q0[i];
        w->qn[i * NC_NL + l] = c->q0[i];
        w->buf[i * NC_NL + l] = 0.0;
        w->g[i * NC_NL + l] = 0.0;
        /* Adam: exp_avg_sq = max = 1 (a finite, non-zero denominator whatever eps);
           RMSprop: square_avg = 1, momentum buffer and grad_avg 0 */
        w->v1[i * NC_NL + l] = c->rule == NC_LRULE_ADAM ? 1.0 : 0.0;
        w->v2[i * NC_NL + l] = c->rule == NC_LRULE_ADAM ? 1.0 : 0.0;
        if (c->rule == NC_LRULE_RMSPROP) w->buf[i * NC_NL + l] = 1.0;
        if (c->rule == NC_LRULE_MIRROR)    /* MirrorDescent's D: 1 (no 0/0 when idle) */
            w->buf[i * NC_NL + l] = 1.0;
    }
    w->nlr[l] = 0.0;
    w->lr[l] = 0.0;                    /* Adam: step_size 0 */
    w->decay[l] = 1.0;
    w->b2[l] = 1.0;                    /* Adam's beta2, RMSprop's alpha: the averages */
    w->omb2[l] = 0.0;                  /* of squares stay at 1; ScalarRMSProp's rho: */
    w->omrho[l] = 0.0;                 /* G stays at 1 */
    w->sroot[l] = 1.0;                 /* sqrt(b2) of the idle lane */
    w->first[l] = 0;
    for (Py_ssize_t k = 0; k < c->npart; ++k) w->G[k * NC_NL + l] = 1.0;
}

/* Loss and gradient of state n, their finiteness checked per lane (rules.pyx
 * _grad_checked: loss first, then the gradient); failing lanes are retired with stop n.
 * Returns the number of lanes still alive. */
NC_INLINE int NCL(eval_checked)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                                    Py_ssize_t n)
{
    int alive = 0;
    NCL(grad)(c, w);
    const nc_vd f = w->f;
    const nc_vd probe = NCL(probe)(NCCV(w->g), c->d, f * 0.0);
    if (NCL(any_nan)(probe)) {
        const nc_vl badf = NCL(nonfinite)(f * 0.0), bad = NCL(nonfinite)(probe);
        for (int l = 0; l < NC_NL; ++l) {
            if (!w->alive[l] || !bad[l]) continue;
            NCL(finish_lane)(c, w, l, p0 + l,
                             badf[l] ? NC_ST_NONFINITE_LOSS : NC_ST_NONFINITE_GRAD, n, NAN,
                             w->q);
        }
    }
    w->loss_min = NCL(sel)(f < w->loss_min, f, w->loss_min);
    for (int l = 0; l < NC_NL; ++l) alive += w->alive[l];
    return alive;
}

/* ---- the block ----------------------------------------------------------------------- */

/* Lane l's hyper-parameters (point p, row hp of the rules.pyx table) in the forms the
 * step uses, each formed as the scalar step forms it (1 - beta, 1 - lr wd, ...). */
NC_INLINE void NCL(lane_hp)(const nc_lane_ctx* c, nc_lane_ws* w, int l, Py_ssize_t p,
                            const double* hp)
{
    double wl;
    w->mom[l] = 0.0; w->damp1[l] = 1.0; w->nest[l] = 0; w->first[l] = 0; w->mom_on[l] = 0;
    w->lr[l] = 0.0; w->w1[l] = 0.0; w->omw1[l] = 1.0; w->b2[l] = 0.0; w->omb2[l] = 1.0;
    w->eps[l] = 0.0; w->decay[l] = 1.0;
    w->coup[l] = 0; w->decp[l] = 0; w->lo[l] = -1; w->ams[l] = 0; w->cen[l] = 0;
    w->omrho[l] = 1.0; w->G0[l] = 0.0; w->nproj[l] = 0.0;
    if (c->rule == NC_LRULE_ADAM) {        /* lr, beta1, beta2, eps, wd, amsgrad, decoupled */
        w->lr[l] = hp[0];
        w->nlr[l] = -hp[0];
        wl = 1.0 - hp[1];                  /* _lerp(m1, g, 1 - beta1) */
        w->w1[l] = wl;
        w->omw1[l] = 1.0 - wl;
        w->lo[l] = wl < 0.5 ? -1 : 0;
        w->b2[l] = hp[2];
        w->omb2[l] = 1.0 - hp[2];
        w->eps[l] = hp[3];
        w->wd[l] = hp[4];
        w->wd_on[l] = hp[4] != 0.0 ? -1 : 0;
        w->ams[l] = hp[5] != 0.0 ? -1 : 0;
        w->coup[l] = hp[4] != 0.0 && hp[6] == 0.0 ? -1 : 0;
        w->decp[l] = hp[4] != 0.0 && hp[6] != 0.0 ? -1 : 0;
        w->decay[l] = 1.0 - hp[0] * hp[4];
        w->pw1[l] = c->powtab + c->pow_row[2 * p] * c->pow_len;
        w->pw2[l] = c->powtab + c->pow_row[2 * p + 1] * c->pow_len;
    } else if (c->rule == NC_LRULE_MIRROR) {   /* lr, wd, map, p (docs/scan.md
                                                  "MirrorDescent lanes") */
        w->lr[l] = hp[0];
        w->nlr[l] = -hp[0];
        w->wd[l] = hp[1];
        w->wd_on[l] = hp[1] != 0.0 ? -1 : 0;
        w->mkind[l] = (int) hp[2];
        w->mdiag[l] = w->mkind[l] == 1 ? -1 : 0;
        w->mpm1[l] = hp[3] - 1.0;          /* pow(|q|, p - 1) */
        w->mipm1[l] = 1.0 / (hp[3] - 1.0); /* pow(|y|, 1 / (p - 1)) */
    } else if (c->rule == NC_LRULE_SRMS) {     /* lr, rho, eps, G0, wd, nproj */
        w->lr[l] = hp[0];
        w->nlr[l] = -hp[0];
        w->b2[l] = hp[1];                  /* rho */
        w->omrho[l] = 1.0 - hp[1];
        w->eps[l] = hp[2];
        w->G0[l] = hp[3];
        w->wd[l] = hp[4];
        w->wd_on[l] = hp[4] != 0.0 ? -1 : 0;
        w->nproj[l] = hp[5];
        w->first[l] = c->sca0[p * c->nsca] == 0.0 ? -1 : 0;
        for (Py_ssize_t k = 0; k < c->npart; ++k)
            w->G[k * NC_NL + l] = c->sca0[p * c->nsca + 1 + k];
    } else if (c->rule == NC_LRULE_RMSPROP) {   /* lr, alpha, eps, wd, momentum, centered */
        w->nlr[l] = -hp[0];
        w->b2[l] = hp[1];                  /* alpha */
        w->omb2[l] = 1.0 - hp[1];
        wl = 1.0 - hp[1];                  /* _lerp(grad_avg, g, 1 - alpha) */
        w->w1[l] = wl;
        w->omw1[l] = 1.0 - wl;
        w->lo[l] = wl < 0.5 ? -1 : 0;
        w->eps[l] = hp[2];
        w->wd[l] = hp[3];
        w->wd_on[l] = hp[3] != 0.0 ? -1 : 0;
        w->mom[l] = hp[4];
        w->mom_on[l] = hp[4] > 0.0 ? -1 : 0;
        w->cen[l] = hp[5] != 0.0 ? -1 : 0;
    } else {                               /* lr, momentum, dampening, nesterov, wd */
        w->nlr[l] = -hp[0];
        w->mom[l] = hp[1];
        w->damp1[l] = 1.0 - hp[2];
        w->nest[l] = hp[3] != 0.0 ? -1 : 0;
        w->wd[l] = hp[4];
        w->wd_on[l] = hp[4] != 0.0 ? -1 : 0;
        w->mom_on[l] = hp[1] != 0.0 ? -1 : 0;
        w->first[l] = c->sca0[p * c->nsca] == 0.0 ? -1 : 0;
    }
}

/* Load the block's lanes: the hyper-parameters, q_0 and momentum buffer of slot p0 + l's
 * task into lane l (padding slots: copies of slot p0's), empty summaries, A_0 of each
 * tracked scale law, and the block-wide flags the step's fast paths test. */
NC_INLINE void NCL(block_start)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                                const Py_ssize_t d)
{
    const Py_ssize_t nsym = c->nsym;
    int l;
    for (l = 0; l < NC_NL; ++l) {
        Py_ssize_t p = nc_lane_task(c, p0 + l);        /* slot p0 + l's task */
        if (p < 0) p = nc_lane_task(c, p0);
        const double* hp = c->hp + p * c->nhp;
        NCL(lane_hp)(c, w, l, p, hp);
        const double* v0 = c->vec0 + p * c->nvecd;
        for (Py_ssize_t i = 0; i < d; ++i) {
            w->q[i * NC_NL + l] = c->q0[i];
            w->buf[i * NC_NL + l] = c->nvecd >= d ? v0[i] : 0.0;
            w->v1[i * NC_NL + l] = c->nvecd >= 2 * d ? v0[d + i] : 0.0;
            w->v2[i * NC_NL + l] = c->nvecd >= 3 * d ? v0[2 * d + i] : 0.0;
        }
        if (c->batch > 0) {              /* the point's stream (padding: point p0's) */
            const unsigned long long* r = c->rng0 + 4 * p;
            w->rng_s[l] = ((unsigned __int128) r[0] << 64) | (unsigned __int128) r[1];
            w->rng_inc[l] = ((unsigned __int128) r[2] << 64) | (unsigned __int128) r[3];
        }
        w->loss_min[l] = INFINITY;
        w->alive[l] = 1;
        w->n_rows[l] = 0;
        for (Py_ssize_t b = 0; b < c->nb; ++b) w->ang_sum[b * NC_NL + l] = 0.0;
        for (Py_ssize_t j = 0; j < nsym; ++j) {
            w->worst[j * NC_NL + l] = 0.0;
            w->worstp[j * NC_NL + l] = 0.0;
            w->wstep[j * NC_NL + l] = -1;
        }
    }
    w->shared = 0;
    if (c->batch > 0) {          /* one stream for every lane (seed streams): shared draws */
        int same = 1;
        for (l = 1; l < NC_NL; ++l)
            same &= w->rng_s[l] == w->rng_s[0] && w->rng_inc[l] == w->rng_inc[0];
        w->shared = same;
        w->sh_s = w->rng_s[0];
        w->sh_inc = w->rng_inc[0];
        nc_pcg64_jump((unsigned long long) (c->tab_T / NC_TAB_C * c->batch), w->sh_inc,
                      &w->jmp_m, &w->jmp_c);
        w->tab_pos = w->tab_len = w->drawn = 0;
        w->rows_cur = NULL;
        if (same && c->rows_tab != NULL)      /* the stream's rows, drawn before the run */
            w->rows_cur = c->rows_tab
                          + (size_t) c->task_stream[nc_lane_task(c, p0)] * (size_t) c->steps
                            * (size_t) c->batch;
        w->mom_cur = NULL;
        if (same && c->mom_tab != NULL)       /* or the moments of its batches */
            w->mom_cur = c->mom_tab
                         + (size_t) c->task_stream[nc_lane_task(c, p0)] * (size_t) c->steps
                           * (size_t) c->mom_len;
    } else {
        w->mom_cur = NULL;
    }
    w->ang_cnt = c->steps > c->late_start ? c->steps - c->late_start : 0;
    w->ang_np = 0;
    w->ang_prev = 0;
    for (Py_ssize_t j = 0; j < nsym; ++j) {             /* A_0 of each balance law */
        nc_vd a = {0};
        const nc_vd* q = NCCV(w->q);
        for (Py_ssize_t k = c->sptr[j]; k < c->sptr[j + 1]; ++k) {
            const Py_ssize_t i = c->sidx[k];
            a = a + q[i] * q[i];
        }
        NCV(w->a_prev)[j] = a;
    }
    w->sym_all = nsym == 1 && c->sptr[0] == 0 && c->sptr[1] == d;
    for (Py_ssize_t k = 0; w->sym_all && k < d; ++k) w->sym_all = c->sidx[k] == k;
    w->any_first = NCL(any)(w->first);
    w->heavy_ball = 1;                 /* every lane: momentum, no nesterov, no dampening */
    w->all_wd = 1;                     /* every lane: weight decay */
    w->lo_all = 1;                     /* every lane: lerp weight < 0.5 */
    w->mom_all = 1;                    /* every lane: momentum (RMSprop) */
    w->mom_none = 1;                   /* no lane: momentum (RMSprop) */
    for (l = 0; l < NC_NL; ++l) {
        w->heavy_ball &= w->mom_on[l] != 0 && w->nest[l] == 0 && w->damp1[l] == 1.0;
        w->all_wd &= w->wd_on[l] != 0;
        w->lo_all &= w->lo[l] != 0;
        w->mom_all &= w->mom_on[l] != 0;
        w->mom_none &= w->mom_on[l] == 0;
    }
    w->sroot = NCL(vsqrt)(w->b2);      /* the free roots' factor (as the scalar step's
                                          sqrt(beta2), sqrt(alpha): the same sqrt) */
    w->ams_any = NCL(any)(w->ams);
    w->cen_any = NCL(any)(w->cen);
    w->form_coup = NCL(free_form)(w->coup);      /* (the lanes' flags are the block's) */
    w->form_wd = NCL(free_form)(w->wd_on);
    w->m_diag_any = 0;                 /* MirrorDescent: some lane's map is diagonal; */
    w->m_nl_any = 0;                   /* some lane's is pnorm or entropy */
    if (c->rule == NC_LRULE_MIRROR)
        for (l = 0; l < NC_NL; ++l) {
            w->m_diag_any |= w->mkind[l] == 1;
            w->m_nl_any |= w->mkind[l] >= 2;
        }
}

NC_INLINE int NCL(n_alive)(const nc_lane_ws* w)
{
    int alive = 0;
    for (int l = 0; l < NC_NL; ++l) alive += w->alive[l];
    return alive;
}

/* The step n -> n+1 with the tracked laws: the free step (no current gradient) into
 * q_free and q_{n+1} into qn, q keeping q_n; then T_j = <q_free - q_n, q_n>_B (scale
 * family, rules.pyx _xi_dot).  With one law on coordinates 0 .. d - 1 in order and SGD,
 * Adam or RMSprop, the step's own loop forms T_n, A_{n+1} and |Delta|^2 (the fused path,
 * docs/balance_laws.md (8.5)) and q_free is not written. */
NC_INLINE void NCL(step_with_free)(const nc_lane_ctx* c, nc_lane_ws* w, const Py_ssize_t d,
                                   Py_ssize_t n, const int rule)
{
    const nc_vd* qp = NCCV(w->q);
    const nc_vd* qf = NCCV(w->q_free);
    if (NCL(fusable)(rule) && w->sym_all) {
        NCL(step)(c, d, w, n, rule, w->q_free, w->qn, 1);
        return;
    }
    NCL(step)(c, d, w, n, rule, w->q_free, w->qn, 0);
    if (w->sym_all) {                  /* one law on coordinates 0 .. d - 1 in order: the
                                          same sum, its indices known (unrolled for a
                                          fixed d) */
        nc_vd T = {0};
        for (Py_ssize_t i = 0; i < d; ++i) T = T + (qf[i] - qp[i]) * qp[i];
        NCV(w->free_T)[0] = T;
        return;
    }
    for (Py_ssize_t j = 0; j < c->nsym; ++j) {
        nc_vd T = {0};
        for (Py_ssize_t k = c->sptr[j]; k < c->sptr[j + 1]; ++k) {
            const Py_ssize_t i = c->sidx[k];
            T = T + (qf[i] - qp[i]) * qp[i];
        }
        NCV(w->free_T)[j] = T;
    }
}

/* Quick probe of q_{n+1} (in qn): its sum is NaN or inf if some coordinate is; a false
 * alarm (finite values whose sum overflows) is sorted out lane by lane, and the lanes it
 * flags are classified exactly as _grad_checked and the probe after the step would have:
 * GRAD at step n (state q_n, f_n not taken) or PARAMS at step n (state q_{n+1}, f_n
 * taken).  Returns the lanes still alive. */
NC_INLINE int NCL(probe_next)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                              Py_ssize_t n, const nc_vd f, const Py_ssize_t d,
                              const int rule)
{
    /* The fused path's A_{n+1} = sum_i q_{n+1,i}^2 is a cheaper first screen: it is
       finite only if every q_{n+1,i} is (a square of inf is inf, of NaN NaN, and a sum
       with an inf or NaN term is not finite), and then every |q_{n+1,i}| <= sqrt(DBL_MAX)
       = 2^512, so the probe's sum below (d terms) is finite too and would have passed.
       Where A_{n+1} is not finite the probe runs as before; so every lane is classified
       exactly as before (docs/balance_laws.md §8, (8.5)). */
    const int fused = c->nsym > 0 && NCL(fusable)(rule) && w->sym_all;
    if (fused && !NCL(any_nan)(w->fz_a1 - w->fz_a1)) return NC_NL;
    const nc_vd* qn = NCCV(w->qn);
    nc_vd s0 = {0}, s1 = {0};
    Py_ssize_t k = 0;
    for (; k + 2 <= d; k += 2) {
        s0 = s0 + qn[k];
        s1 = s1 + qn[k + 1];
    }
    for (; k < d; ++k) s0 = s0 + qn[k];
    nc_vd s = s0 + s1;
    /* MirrorDescent's entropy map takes a gradient of +inf to q exp(-inf) = 0, finite:
       its gradient is probed too (NaN exactly where some g_i is not finite) */
    if (c->rule == NC_LRULE_MIRROR) s = s + NCL(probe)(NCCV(w->g), d, (nc_vd) {0});
    if (!NCL(any_nan)(s - s)) return NC_NL;          /* (every lane's count is irrelevant) */
    for (int l = 0; l < NC_NL; ++l) {
        if (!w->alive[l]) continue;
        double pg = 0.0, pq = 0.0;
        for (Py_ssize_t i = 0; i < d; ++i) {
            pg = pg + w->g[i * NC_NL + l] * 0.0;
            pq = pq + w->qn[i * NC_NL + l] * 0.0;
        }
        if (pg != pg) {
            NCL(finish_lane)(c, w, l, p0 + l, NC_ST_NONFINITE_GRAD, n, NAN, w->q);
        } else if (pq != pq) {
            if (f[l] < w->loss_min[l]) w->loss_min[l] = f[l];
            if (c->rec_every > 0 && n % c->rec_every == 0)   /* state n taken */
                NCL(record_row)(c, w, l, p0 + l, n, f[l], w->q);
            NCL(finish_lane)(c, w, l, p0 + l, NC_ST_NONFINITE_PARAMS, n, NAN, w->qn);
        } else {
            continue;
        }
        if (fused) {
            /* the retired lane now idles at q0 (q = qn = q0): the sums NCL(scale_laws)
               formed from it after the swap (A_{n+1} = |q0|^2 in order from +0,
               |Delta|^2 = +0), so that its stale A_n stays finite and the law's screen
               stays calm (its row is written; these values only keep the block fast) */
            double a = 0.0;
            for (Py_ssize_t i = 0; i < d; ++i) a = a + c->q0[i] * c->q0[i];
            w->fz_a1[l] = a;
            w->fz_dd[l] = 0.0;
        }
    }
    return NCL(n_alive)(w);
}

/* The screen's factor of a worst value (docs/scan.md, (S.1)): fl(worst (1 - 2^-40)),
 * a normal number, where worst >= 2^-1000, else 0 (which fails the screen) */
NC_INLINE nc_vd NCL(worstp)(const nc_vd worst)
{
    const nc_vd zero = {0};
    return NCL(sel)(worst >= 0x1p-1000, worst * (1.0 - 0x1p-40), zero);
}

/* After the swap (q = q_{n+1}, qn = q_n): each tracked scale law's residual
 * (A_{n+1} - A_n - |Delta|^2) - 2 T_n = 0 (rules.pyx _charges_after), relative to its
 * terms, folded into the lanes' worst values. */
NC_INLINE void NCL(scale_laws)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t n,
                               const Py_ssize_t d, const int rule)
{
    const int fused = NCL(fusable)(rule) && w->sym_all;
    const nc_vd* q1v = NCCV(w->q);
    const nc_vd* q0v = NCCV(w->qn);
    nc_vd* worst = NCV(w->worst);
    nc_vd* wp = NCV(w->worstp);
    nc_vd* a_prev = NCV(w->a_prev);
    for (Py_ssize_t j = 0; j < c->nsym; ++j) {
        /* A_n = |q_n,B|^2 is the previous step's A_{n+1}: the same sum of the same
           numbers in the same order (the first step's is summed before the loop; a
           retired lane's is stale, but its row is written already) */
        nc_vd a1 = {0}, dd = {0};
        const nc_vd a0 = a_prev[j];
        if (fused) {                   /* (formed by the step's loop, (8.5)) */
            a1 = w->fz_a1;
            dd = w->fz_dd;
        } else if (w->sym_all) {              /* (coordinates 0 .. d - 1 in order: the same sums) */
            for (Py_ssize_t i = 0; i < d; ++i) {
                const nc_vd q1 = q1v[i], x = q1 - q0v[i];
                a1 = a1 + q1 * q1;
                dd = dd + x * x;
            }
        } else {
            for (Py_ssize_t k = c->sptr[j]; k < c->sptr[j + 1]; ++k) {
                const Py_ssize_t i = c->sidx[k];
                const nc_vd q1 = q1v[i], x = q1 - q0v[i];
                a1 = a1 + q1 * q1;
                dd = dd + x * x;
            }
        }
        a_prev[j] = a1;
        const nc_vd T = NCCV(w->free_T)[j];
        const nc_vd R = (a1 - a0 - dd) - 2.0 * T;
        const nc_vd sc = (a1 + a0 + dd) + 2.0 * NCL(fabs)(T);
        const nc_vd aR = NCL(fabs)(R);
        /* Screen, exact (docs/scan.md, (S.1)): where p = fl(sc wp) with the lane's
           factor wp = fl(worst (1 - 2^-40)) > 0 is a normal number and |R| <= p, then
           0 < sc < inf and |R|/sc < worst, so the rounded quotient is <= worst and the
           lane's worst cannot rise: no division is needed unless some lane fails. */
        const nc_vd p = sc * wp[j];
        const nc_vl calm = (p >= 0x1p-1022) & (p < INFINITY) & (aR <= p);
        if (!NCL(any)(~calm)) continue;
        const nc_vd zero = {0}, one = zero + 1.0;
        /* rel = |R|/sc if sc > 0, else (R == 0 ? 0 : 1); NaN -> 1 */
        nc_vd rel = NCL(sel)(sc > 0.0, aR / sc, NCL(sel)(R == 0.0, zero, one));
        rel = NCL(sel)(rel != rel, one, rel);
        const nc_vl up = rel > worst[j];
        if (NCL(any)(up)) {
            worst[j] = NCL(sel)(up, rel, worst[j]);
            wp[j] = NCL(worstp)(worst[j]);
            for (int l = 0; l < NC_NL; ++l)
                if (up[l]) w->wstep[j * NC_NL + l] = n;
        }
    }
}

/* Ctrl-C / cancel: every live lane stops at step n with status INTERRUPTED. */
NC_INLINE void NCL(cancel_lanes)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                                 Py_ssize_t n)
{
    for (int l = 0; l < NC_NL; ++l)
        if (w->alive[l])
            NCL(finish_lane)(c, w, l, p0 + l, NC_ST_INTERRUPTED, n, NAN, w->q);
}

/* The terminal state q_steps of the lanes still alive: its loss, angle term, row. */
NC_INLINE void NCL(block_end)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                              const Py_ssize_t d)
{
    if (NCL(eval_checked)(c, w, p0, c->steps) == 0) return;
    NCL(take_angle)(c, d, w, c->steps);
    for (int l = 0; l < NC_NL; ++l)
        if (w->alive[l]) {
            if (c->rec_every > 0 && c->steps % c->rec_every == 0)
                NCL(record_row)(c, w, l, p0 + l, c->steps, w->f[l], w->q);
            NCL(finish_lane)(c, w, l, p0 + l, NC_ST_OK, -1, w->f[l], w->q);
        }
}

/* Run the tasks of slots p0 .. p0 + NC_NL - 1 (nc_lane_task: slot k is task k without a
 * slot map; padding slots copy slot p0's task, their results discarded) from start to
 * finish and write their output rows. */
NC_INLINE void NCL(run_block_d)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0,
                                const Py_ssize_t d, const int rule)
{
    Py_ssize_t n;
    w->free_pre = NC_PRE_NONE;
    NCL(block_start)(c, w, p0, d);
    int real = 0;                                   /* lanes that are tasks */
    for (int l = 0; l < NC_NL; ++l) real += nc_lane_task(c, p0 + l) >= 0;
    Py_ssize_t reported = 0;                        /* point-steps added to w->progress */
    int cancelled = 0;
    /* the fused path (NCL(step_with_free)) carries A_{n+1} = |q_{n+1}|^2 into step n + 1 */
    const int fused = c->nsym > 0 && NCL(fusable)(rule) && w->sym_all;

    for (n = 0; n < c->steps; ++n) {
        if ((n & c->poll_mask) == 0) {
            if (*c->cancel) {
                NCL(cancel_lanes)(c, w, p0, n);
                cancelled = 1;
                break;
            }
            w->progress += n * real - reported;
            reported = n * real;
        }
        /* a full-batch Rayleigh gradient of a fused block whose rule runs a plain loop
           with some direct lane forms the step's free denominators (NCL(free_dens); from
           step 1 on, when the carried roots exist) */
        w->free_pre = NC_PRE_NONE;
        if (fused && n > 0 && c->pot == NC_LPOT_RAYLEIGH && c->batch == 0) {
            if (rule == NC_LRULE_RMSPROP && !w->cen_any && w->mom_none
                && w->form_wd != NC_FREE_CARRIED) {
                w->free_pre = NC_PRE_RMSPROP;
            } else if (rule == NC_LRULE_ADAM && !w->ams_any && w->lo_all
                       && w->form_coup != NC_FREE_CARRIED) {
                NCL(adam_scalars)(c, w, n, &w->pre_nss, &w->pre_bc2s);
                w->pre_ibc2s = 1.0 / w->pre_bc2s;
                w->free_pre = NC_PRE_ADAM;
            }
        }
        /* the loss and gradient of state n.  Only the loss is probed here: a non-finite
           gradient always makes q_{n+1} non-finite (it enters the update multiplied by
           -lr, and 0 * inf is NaN too), so the probe of q_{n+1} catches it. */
        NCL(grad_step)(c, w, d, fused && n > 0);
        const nc_vd f = w->f;
        if (NCL(any_nan)(f - f)) {                  /* NaN exactly where f is inf or NaN */
            for (int l = 0; l < NC_NL; ++l)
                if (w->alive[l] && f[l] * 0.0 != 0.0)
                    NCL(finish_lane)(c, w, l, p0 + l, NC_ST_NONFINITE_LOSS, n, NAN, w->q);
            if (NCL(n_alive)(w) == 0) break;
        }
        NCL(take_angle)(c, d, w, n);
        if (rule == NC_LRULE_SRMS && w->any_first) NCL(init_srms)(c, w);
        if (c->nsym > 0)
            NCL(step_with_free)(c, w, d, n, rule);
        else
            NCL(step)(c, d, w, n, rule, NULL, w->qn, 0);  /* q_{n+1} into qn; q keeps q_n */
        w->free_pre = NC_PRE_NONE;
        if (NCL(probe_next)(c, w, p0, n, f, d, rule) == 0) break;
        if (c->rec_every > 0 && n % c->rec_every == 0)
            for (int l = 0; l < NC_NL; ++l)
                if (w->alive[l]) NCL(record_row)(c, w, l, p0 + l, n, f[l], w->q);
        w->loss_min = NCL(sel)(f < w->loss_min, f, w->loss_min);
        {
            double* t = w->q;
            w->q = w->qn;
            w->qn = t;
        }
        if (c->nsym > 0) {
            if (rule == NC_LRULE_MIRROR) NCL(mirror_laws)(c, w, n);
            else NCL(scale_laws)(c, w, n, d, rule);
        }
    }
    w->free_pre = NC_PRE_NONE;                      /* (a loop left before its step) */
    if (n == c->steps && !cancelled) NCL(block_end)(c, w, p0, d);
    w->progress += c->steps * real - reported;      /* retired lanes count as done */
}

/* The block's run for any d (and ScalarRMSProp's for every d: its loops go through the
 * partition's index list, which a constant d would not unroll; and MirrorDescent's: its
 * nonlinear maps' cost is the per-lane libm calls, and 2 x 16 more copies of the block's
 * run would lengthen the build by minutes) */
static __attribute__((noinline)) void NCL(run_block_any)(const nc_lane_ctx* c,
                                                         nc_lane_ws* w, Py_ssize_t p0)
{
    if (c->rule == NC_LRULE_ADAM) NCL(run_block_d)(c, w, p0, c->d, NC_LRULE_ADAM);
    else if (c->rule == NC_LRULE_RMSPROP) NCL(run_block_d)(c, w, p0, c->d, NC_LRULE_RMSPROP);
    else if (c->rule == NC_LRULE_SRMS) NCL(run_block_d)(c, w, p0, c->d, NC_LRULE_SRMS);
    else if (c->rule == NC_LRULE_MIRROR) NCL(run_block_d)(c, w, p0, c->d, NC_LRULE_MIRROR);
    else NCL(run_block_d)(c, w, p0, c->d, NC_LRULE_SGD);
}

/* The block's run, compiled once per rule (SGD, Adam, RMSprop) for each d <= 16 with d a
 * constant.  With d known, every loop over coordinates has a known trip count and is
 * unrolled, and the potential's and the rule's passes keep the block's vectors in
 * registers: ~8% of an SGD d = 8 step (docs/scan.md).  The code, and so every operation
 * and its order, is the same: the versions agree bitwise. */
#define NC_FIXED_D(D)                                                                     \
static __attribute__((noinline)) void NCL(run_block_##D)(const nc_lane_ctx* c,            \
                                                         nc_lane_ws* w, Py_ssize_t p0)     \
{                                                                                         \
    if (c->rule == NC_LRULE_ADAM) NCL(run_block_d)(c, w, p0, D, NC_LRULE_ADAM);           \
    else if (c->rule == NC_LRULE_RMSPROP) NCL(run_block_d)(c, w, p0, D, NC_LRULE_RMSPROP); \
    else if (c->rule == NC_LRULE_SRMS || c->rule == NC_LRULE_MIRROR)                      \
        NCL(run_block_any)(c, w, p0);                                                     \
    else NCL(run_block_d)(c, w, p0, D, NC_LRULE_SGD);                                     \
}
NC_FIXED_D(1) NC_FIXED_D(2) NC_FIXED_D(3) NC_FIXED_D(4) NC_FIXED_D(5) NC_FIXED_D(6)
NC_FIXED_D(7) NC_FIXED_D(8) NC_FIXED_D(9) NC_FIXED_D(10) NC_FIXED_D(11) NC_FIXED_D(12)
NC_FIXED_D(13) NC_FIXED_D(14) NC_FIXED_D(15) NC_FIXED_D(16)
#undef NC_FIXED_D

static void NCL(run_block)(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0)
{
    switch (c->d) {
#define NC_CASE(D) case D: NCL(run_block_##D)(c, w, p0); break;
    NC_CASE(1) NC_CASE(2) NC_CASE(3) NC_CASE(4) NC_CASE(5) NC_CASE(6) NC_CASE(7) NC_CASE(8)
    NC_CASE(9) NC_CASE(10) NC_CASE(11) NC_CASE(12) NC_CASE(13) NC_CASE(14) NC_CASE(15)
    NC_CASE(16)
#undef NC_CASE
    default: NCL(run_block_any)(c, w, p0);
    }
}

#undef NCV
#undef NCCV
