/* Region-of-interest JPEG decoding for reid.imageio (loaded with ctypes; no Python API).
 *
 * Camera-trap photos are large and the animal's bbox is a part of them. libjpeg-turbo can
 * decode a window of a JPEG: jpeg_skip_scanlines() passes over the rows above the window
 * without the inverse DCT, upsampling or colour conversion, jpeg_crop_scanline() limits those
 * to the window's columns, and decoding stops after the window's last row, so the entropy-coded
 * data below it is never read. With DCT scaling (scale_denom 1, 2, 4, 8) this is the cheapest
 * way to the crop that a model will see.
 *
 * Returns 0 on success, 1 on a libjpeg error (corrupt data; message in msg), 2 when the data
 * ended before the window was complete (truncated), 3 for a colour space this path does not
 * handle (CMYK/YCCK: the caller falls back to Pillow).
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

struct roi_error {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int truncated;
  char *msg;
  int msglen;
};

static void roi_error_exit(j_common_ptr cinfo) {
  struct roi_error *err = (struct roi_error *)cinfo->err;
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  snprintf(err->msg, (size_t)err->msglen, "%s", buf);
  longjmp(err->jump, 1);
}

static void roi_emit_message(j_common_ptr cinfo, int level) {
  struct roi_error *err = (struct roi_error *)cinfo->err;
  if (level >= 0) return; /* trace messages */
  err->pub.num_warnings++;
  /* Pillow treats only a premature end of data as an error; so do we. */
  if (err->pub.msg_code == JWRN_JPEG_EOF && !err->truncated) {
    char buf[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buf);
    snprintf(err->msg, (size_t)err->msglen, "%s", buf);
    err->truncated = 1;
  }
}

int reid_jpeg_decode_roi(const unsigned char *data, unsigned long size, int denom, int fast,
                         int x, int y, int w, int h, unsigned char *out, char *msg, int msglen) {
  struct jpeg_decompress_struct cinfo;
  struct roi_error err;
  unsigned char *volatile row = NULL; /* volatile: read after longjmp */
  int status = 0;

  memset(&err, 0, sizeof(err));
  err.msg = msg;
  err.msglen = msglen;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = roi_error_exit;
  err.pub.emit_message = roi_emit_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free((void *)row);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE &&
      cinfo.jpeg_color_space != JCS_RGB) {
    snprintf(msg, (size_t)msglen, "colour space %d", (int)cinfo.jpeg_color_space);
    jpeg_destroy_decompress(&cinfo);
    return 3;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned int)denom;
  if (fast) { /* as Pillow's draft mode */
    cinfo.do_fancy_upsampling = FALSE;
    cinfo.dct_method = JDCT_FASTEST;
  }
  jpeg_start_decompress(&cinfo);
  if (x < 0 || y < 0 || w < 1 || h < 1 || (JDIMENSION)(x + w) > cinfo.output_width ||
      (JDIMENSION)(y + h) > cinfo.output_height) {
    snprintf(msg, (size_t)msglen, "window %dx%d+%d+%d outside the %ux%u output", w, h, x, y,
             cinfo.output_width, cinfo.output_height);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  JDIMENSION xoff = (JDIMENSION)x, cw = (JDIMENSION)w;
  if (cw < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &cw); /* widens to iMCU edges */
  if (y > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)y);
  row = (unsigned char *)malloc((size_t)cw * 3);
  if (!row) {
    snprintf(msg, (size_t)msglen, "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  for (int r = 0; r < h; r++) {
    JSAMPROW rows[1] = {(JSAMPROW)row};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
      snprintf(msg, (size_t)msglen, "no scanline %d", y + r);
      status = 1;
      break;
    }
    memcpy(out + (size_t)r * (size_t)w * 3, (unsigned char *)row + (size_t)(x - (int)xoff) * 3, (size_t)w * 3);
  }
  if (!status && err.truncated) status = 2;
  jpeg_destroy_decompress(&cinfo); /* aborts: rows below the window are never decoded */
  free((void *)row);
  return status;
}

/* Ingest's integrity check: libjpeg's warnings ("Corrupt JPEG data: ...", "Premature end of
 * JPEG file") mean the pixels are partly invented, which Pillow does not report. Every
 * entropy-coded bit is read (at 1/8 scale, so the inverse DCT costs little) and the first
 * warning is returned in msg. Returns 0 clean, 1 libjpeg error, 2 premature end, 4 corrupt. */
static void check_emit_message(j_common_ptr cinfo, int level) {
  struct roi_error *err = (struct roi_error *)cinfo->err;
  if (level >= 0) return;
  if (err->pub.num_warnings++ == 0) {
    char buf[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buf);
    snprintf(err->msg, (size_t)err->msglen, "%s", buf);
    err->truncated = err->pub.msg_code == JWRN_JPEG_EOF;
  }
}

int reid_jpeg_check(const unsigned char *data, unsigned long size, char *msg, int msglen) {
  struct jpeg_decompress_struct cinfo;
  struct roi_error err;
  unsigned char *volatile row = NULL;

  memset(&err, 0, sizeof(err));
  err.msg = msg;
  err.msglen = msglen;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = roi_error_exit;
  err.pub.emit_message = check_emit_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free((void *)row);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  cinfo.scale_num = 1;
  cinfo.scale_denom = 8;
  cinfo.do_fancy_upsampling = FALSE;
  cinfo.dct_method = JDCT_FASTEST;
  jpeg_start_decompress(&cinfo);
  row = (unsigned char *)malloc((size_t)cinfo.output_width * (size_t)cinfo.output_components);
  if (!row) {
    snprintf(msg, (size_t)msglen, "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW rows[1] = {(JSAMPROW)row};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) break;
  }
  jpeg_finish_decompress(&cinfo); /* reads to EOI: extraneous bytes before it are a warning too */
  jpeg_destroy_decompress(&cinfo);
  free((void *)row);
  if (err.pub.num_warnings == 0) return 0;
  return err.truncated ? 2 : 4;
}
