/* A C device app on the Transfusion runtime: load a bundle, draw a prompt with a progress
 * callback, save the PNG, caption the image, free everything.
 *
 *   cargo build -p transfusion-ffi                 # libtransfusion.so / .a in target/debug
 *   cc -std=c99 examples/c/generate.c -Isdk/ffi/include -Ltarget/debug -ltransfusion \
 *      -Wl,-rpath,"$PWD/target/debug" -o generate
 *   ./generate models/shapes64/bundle "a red circle above a blue square" generated.png
 *
 * Exit status 0 on success; on failure the library's message (tf_last_error) on stderr.
 * With TF_CHECK_LEAKS=1 it also fails if any library handle is still live at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transfusion.h"

static int fail(const char *what, tf_status status) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, tf_last_error(), tf_status_name((int32_t)status));
  return 1;
}

static int32_t on_progress(void *user_data, uint32_t step, uint32_t total) {
  const char *prompt = (const char *)user_data;
  fprintf(stderr, "\r\"%s\": step %u/%u", prompt, (unsigned)step, (unsigned)total);
  if (step == total) fputc('\n', stderr);
  return 0; /* go on; non-zero would cancel */
}

static unsigned previews = 0;

static int32_t on_preview(void *user_data, uint32_t step, const uint8_t *rgb, uint32_t width,
                          uint32_t height) {
  (void)user_data;
  (void)step;
  /* A latent-resolution RGB8 picture of the image so far, e.g. for a display. */
  if (rgb != NULL && width > 0 && height > 0) previews++;
  return 0;
}

static void on_warning(void *user_data, const char *message) {
  (void)user_data;
  fprintf(stderr, "warning: %s\n", message);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s BUNDLE_DIR PROMPT OUT.png\n", argv[0]);
    return 2;
  }
  const char *bundle = argv[1], *prompt = argv[2], *out_path = argv[3];
  fprintf(stderr, "libtransfusion %s\n", tf_version());
  /* The library's warnings (e.g. why a GPU was not used) on stderr; silent by default. */
  tf_set_log(TF_LOG_WARN, NULL, NULL);

  tf_load_options load;
  tf_status status = tf_load_options_init(&load);
  if (status != TF_OK) return fail("tf_load_options_init", status);
  load.precision = TF_PRECISION_FP32;
  load.threads = 1;

  tf_model *model = NULL;
  status = tf_model_load(bundle, &load, &model);
  if (status != TF_OK) return fail("loading the model", status);

  tf_generate_options options;
  tf_generate_options_init(&options);
  options.seed = 0;
  options.on_progress = on_progress;
  options.on_preview = on_preview;
  options.on_warning = on_warning;
  options.user_data = (void *)prompt;

  tf_image *image = NULL;
  char *caption = NULL;
  int rc = 0;
  status = tf_generate_image(model, prompt, &options, &image);
  if (status != TF_OK) {
    rc = fail("generating", status);
    goto done;
  }
  uint32_t width = 0, height = 0;
  tf_image_size(image, &width, &height);

  /* The pixels are the app's to use (a display, a network frame, ...). */
  size_t len = (size_t)width * height * 3;
  unsigned char *rgb = malloc(len);
  if (rgb == NULL) {
    fprintf(stderr, "error: out of memory\n");
    rc = 1;
    goto done;
  }
  status = tf_image_copy_rgb(image, rgb, len);
  unsigned long sum = 0;
  for (size_t i = 0; i < len; i++) sum += rgb[i];
  free(rgb);
  if (status != TF_OK) {
    rc = fail("copying the pixels", status);
    goto done;
  }

  status = tf_image_save_png(image, out_path);
  if (status != TF_OK) {
    rc = fail("saving the PNG", status);
    goto done;
  }
  printf("wrote %s (%ux%u, mean level %.1f, %u previews)\n", out_path, (unsigned)width,
         (unsigned)height, len ? (double)sum / (double)len : 0.0, previews);

  status = tf_caption(model, image, NULL, &caption);
  if (status != TF_OK) {
    rc = fail("captioning", status);
    goto done;
  }
  printf("caption: %s\n", caption);

done:
  tf_string_free(caption);
  tf_image_free(image);
  tf_model_free(model);
  if (rc == 0 && getenv("TF_CHECK_LEAKS") != NULL) {
    size_t models = 0, images = 0, cancels = 0, strings = 0;
    tf_live_handles(&models, &images, &cancels, &strings);
    if (models + images + cancels + strings != 0) {
      fprintf(stderr, "error: live handles at exit: %zu models, %zu images, %zu cancel tokens, %zu strings\n",
              models, images, cancels, strings);
      return 1;
    }
  }
  return rc;
}
