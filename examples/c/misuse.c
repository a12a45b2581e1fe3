/* ABI misuse from C, run in CI (also under AddressSanitizer): every case must come back as
 * its error code with a message, never a crash or a sanitizer report. Also a cancel token
 * triggered from another thread than the generating one.
 *
 *   ./misuse BUNDLE_DIR      exit 0 when every case gave the expected status
 *   (build with -pthread) */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "transfusion.h"

static int failures = 0;

static void expect(const char *what, tf_status got, tf_status want) {
  if (got != want) {
    fprintf(stderr, "FAIL %s: got %s, want %s (%s)\n", what, tf_status_name((int32_t)got),
            tf_status_name((int32_t)want), tf_last_error());
    failures++;
  } else if (want != TF_OK && tf_last_error()[0] == '\0') {
    fprintf(stderr, "FAIL %s: no message\n", what);
    failures++;
  } else {
    printf("ok   %-44s %s%s%s\n", what, tf_status_name((int32_t)got), want != TF_OK ? ": " : "",
           want != TF_OK ? tf_last_error() : "");
  }
}

/* One generation on its own thread, with a cancel token. */
struct job {
  tf_model *model;
  tf_cancel *cancel;
  tf_status status;
};

static void *generate_job(void *arg) {
  struct job *job = (struct job *)arg;
  tf_generate_options options;
  tf_generate_options_init(&options);
  options.cancel = job->cancel;
  tf_image *image = NULL;
  job->status = tf_generate_image(job->model, "a red circle", &options, &image);
  tf_image_free(image);
  return NULL;
}

static tf_status run_job(struct job *job, int cancel_while_running) {
  pthread_t thread;
  if (pthread_create(&thread, NULL, generate_job, job) != 0) return TF_ERR_INTERNAL;
  if (cancel_while_running) tf_cancel_request(job->cancel);
  pthread_join(thread, NULL);
  return job->status;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s BUNDLE_DIR\n", argv[0]);
    return 2;
  }
  tf_model *model = NULL;
  tf_image *image = NULL;
  char *text = NULL;

  expect("load: NULL directory", tf_model_load(NULL, NULL, &model), TF_ERR_NULL_ARGUMENT);
  expect("load: NULL out", tf_model_load(argv[1], NULL, NULL), TF_ERR_NULL_ARGUMENT);
  expect("load: invalid UTF-8", tf_model_load("\xff\xfe", NULL, &model), TF_ERR_INVALID_UTF8);
  expect("load: missing directory", tf_model_load("/nonexistent", NULL, &model), TF_ERR_IO);

  tf_load_options load;
  memset(&load, 0, sizeof load);
  expect("load: options not initialised", tf_model_load(argv[1], &load, &model),
         TF_ERR_INVALID_ARGUMENT);
  tf_load_options_init(&load);
  load.device = 99;
  expect("load: unknown device", tf_model_load(argv[1], &load, &model), TF_ERR_INVALID_ARGUMENT);
  expect("load: model NULL after failures", model == NULL ? TF_OK : TF_ERR_INTERNAL, TF_OK);

  expect("load", tf_model_load(argv[1], NULL, &model), TF_OK);
  expect("generate: NULL prompt", tf_generate_image(model, NULL, NULL, &image),
         TF_ERR_NULL_ARGUMENT);
  expect("generate: invalid UTF-8", tf_generate_image(model, "a \xc3\x28", NULL, &image),
         TF_ERR_INVALID_UTF8);
  expect("generate: empty prompt", tf_generate_image(model, "  ", NULL, &image),
         TF_ERR_INVALID_ARGUMENT);

  unsigned char rgb[12] = {0};
  expect("image: wrong length", tf_image_new(2, 2, rgb, 11, &image), TF_ERR_BUFFER_SIZE);
  expect("image: NULL pixels", tf_image_new(2, 2, NULL, 12, &image), TF_ERR_NULL_ARGUMENT);
  expect("image", tf_image_new(2, 2, rgb, 12, &image), TF_OK);
  unsigned char small[5];
  expect("copy: buffer too small", tf_image_copy_rgb(image, small, sizeof small),
         TF_ERR_BUFFER_SIZE);
  expect("save: NULL path", tf_image_save_png(image, NULL), TF_ERR_NULL_ARGUMENT);
  expect("save: missing directory", tf_image_save_png(image, "/nonexistent/dir/x.png"),
         TF_ERR_IO);
  tf_image *stale = image;
  expect("free", tf_image_free(image), TF_OK);
  expect("use after free", tf_image_size(stale, NULL, NULL), TF_ERR_INVALID_HANDLE);
  expect("double free", tf_image_free(stale), TF_ERR_INVALID_HANDLE);
  expect("load PNG: not a PNG", tf_image_load_png(argv[0], &image), TF_ERR_IMAGE);
  expect("out-handle NULL after a failure", image == NULL ? TF_OK : TF_ERR_INTERNAL, TF_OK);
  expect("model handle as an image", tf_image_free((tf_image *)model), TF_ERR_INVALID_HANDLE);
  expect("made-up handle", tf_model_free((tf_model *)(uintptr_t)0x1234567), TF_ERR_INVALID_HANDLE);
  expect("caption: freed image", tf_caption(model, stale, NULL, &text), TF_ERR_INVALID_HANDLE);
  expect("string not from the library", tf_string_free((char *)"literal"), TF_ERR_INVALID_HANDLE);

  tf_cancel *cancel = NULL;
  expect("cancel token", tf_cancel_new(&cancel), TF_OK);
  struct job job = {model, cancel, TF_OK};
  expect("cancel requested before the thread starts", tf_cancel_request(cancel), TF_OK);
  expect("generation on a thread: cancelled", run_job(&job, 0), TF_ERR_CANCELLED);
  expect("cancel reset", tf_cancel_reset(cancel), TF_OK);
  expect("generation on a thread: runs", run_job(&job, 0), TF_OK);
  expect("cancel reset", tf_cancel_reset(cancel), TF_OK);
  tf_status raced = run_job(&job, 1); /* cancelled from this thread while it runs */
  expect("cancel while it runs: done or cancelled",
         raced == TF_OK || raced == TF_ERR_CANCELLED ? TF_OK : raced, TF_OK);
  expect("cancel free", tf_cancel_free(cancel), TF_OK);
  expect("cancel: freed token", tf_cancel_request(cancel), TF_ERR_INVALID_HANDLE);

  tf_model *freed = model;
  expect("model free", tf_model_free(model), TF_OK);
  expect("generate: freed model", tf_generate_image(freed, "a red circle", NULL, &image),
         TF_ERR_INVALID_HANDLE);
  expect("free NULL", tf_model_free(NULL), TF_OK);

  size_t models = 9, images = 9, cancels = 9, strings = 9;
  tf_live_handles(&models, &images, &cancels, &strings);
  if (models + images + cancels + strings != 0)
    fprintf(stderr, "live: %zu models, %zu images, %zu cancel tokens, %zu strings\n", models,
            images, cancels, strings);
  expect("no live handles left", models + images + cancels + strings == 0 ? TF_OK : TF_ERR_INTERNAL,
         TF_OK);
  if (failures) fprintf(stderr, "%d case(s) failed\n", failures);
  return failures ? 1 : 0;
}
