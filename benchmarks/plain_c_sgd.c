/* Plain C reference loops for benchmarks/bench_rules.py: SGD with momentum and weight
 * decay (torch semantics) on the Rayleigh quotient and on the BatchNorm unit (full batch),
 * written the way a C programmer would, with no library around them.  Compiled with
 * gcc -O3 -ffp-contract=off at benchmark time (the same flags as the kernels). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

static double grad_rayleigh(const double *q, double *g, long d, const double *A, double *Aq) {
    double qAq = 0.0, qq = q[0] * q[0];
    for (long i = 1; i < d; i++) qq += q[i] * q[i];
    double iqq = 1.0 / qq;
    for (long i = 0; i < d; i++) {
        double s = A[i * d] * q[0];
        for (long j = 1; j < d; j++) s += A[i * d + j] * q[j];
        qAq = i ? qAq + q[i] * s : q[0] * s; Aq[i] = s * iqq;
    }
    double t = qAq * iqq, ti = t * iqq;
    for (long i = 0; i < d; i++) g[i] = Aq[i] - q[i] * ti;
    return 0.5 * t;
}

static double grad_bn(const double *w, double *g, long d, const double *X, const double *y,
                      long N, double *z) {
    double mean = 0.0, var = 0.0, f = 0.0, md = 0.0, mdz = 0.0;
    for (long i = 0; i < N; i++) {
        double s = 0.0;
        for (long j = 0; j < d; j++) s += X[i * d + j] * w[j];
        z[i] = s; mean += s;
    }
    mean /= N;
    for (long i = 0; i < N; i++) { z[i] -= mean; var += z[i] * z[i]; }
    var /= N;
    double sd = sqrt(var);
    for (long i = 0; i < N; i++) {
        z[i] /= sd;
        double e = z[i] - y[i];
        f += e * e; md += e; mdz += e * z[i];
    }
    f = 0.5 * f / N; md = md / N / N; mdz = mdz / N / N;
    memset(g, 0, d * sizeof(double));
    for (long i = 0; i < N; i++) {
        double dz = ((z[i] - y[i]) / N - md - z[i] * mdz) / sd;
        for (long j = 0; j < d; j++) g[j] += dz * X[i * d + j];
    }
    return f;
}

/* kind 0: Rayleigh(A = data0), kind 1: BatchNorm unit (X = data0, y = data1, N rows).
 * Runs `steps` steps of SGD(lr, momentum, weight_decay) from q (updated in place);
 * returns the last loss. */
double sgd_plain(int kind, double *q, long d, long steps, double lr, double mom, double wd,
                 const double *data0, const double *data1, long N) {
    double *g = malloc(d * sizeof(double)), *buf = calloc(d, sizeof(double));
    double *scratch = malloc((kind == 0 ? d : N) * sizeof(double));
    double f = 0.0;
    for (long n = 0; n < steps; n++) {
        f = kind == 0 ? grad_rayleigh(q, g, d, data0, scratch)
                      : grad_bn(q, g, d, data0, data1, N, scratch);
        for (long i = 0; i < d; i++) {
            double di = g[i] + wd * q[i];
            buf[i] = n == 0 ? di : buf[i] * mom + di;
            q[i] -= lr * buf[i];
        }
    }
    free(g); free(buf); free(scratch);
    return f;
}
