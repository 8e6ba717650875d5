// Memory read bandwidth with N threads: each sums its half of a 1 GiB buffer with 256-bit loads; best of 5.
// Token generation is bound by this: ceiling tok/s ≈ bandwidth ÷ model file size.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *buf;
static size_t per;
static double sink[64];

static void *reader(void *arg) {
  long t = (long)arg;
  const float *p = buf + t * per;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  for (size_t i = 0; i < per; i += 32) {
    acc0 = _mm256_add_ps(acc0, _mm256_load_ps(p + i));
    acc1 = _mm256_add_ps(acc1, _mm256_load_ps(p + i + 8));
    acc2 = _mm256_add_ps(acc2, _mm256_load_ps(p + i + 16));
    acc3 = _mm256_add_ps(acc3, _mm256_load_ps(p + i + 24));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  sink[t] = out[0];
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  size_t bytes = (size_t)1 << 30;
  buf = aligned_alloc(64, bytes);
  memset(buf, 1, bytes);
  per = bytes / sizeof(float) / threads;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    pthread_t th[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long t = 0; t < threads; t++) pthread_create(&th[t], NULL, reader, (void *)t);
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    if (bytes / s > best) best = bytes / s;
  }
  printf("%.3f\n", best / 1e9);
  return sink[0] == 12345.0;
}
