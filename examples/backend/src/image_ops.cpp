#include <cstdio>
#include <stdexcept>

#include <jpeglib.h>
#include <opencv2/imgproc.hpp>

#include "backend/backend.h"

namespace backend {

std::vector<unsigned char> jpeg_encode(const std::vector<unsigned char>& grey, int width, int height) {
    jpeg_compress_struct cinfo;
    jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&cinfo);
    unsigned char* buffer = nullptr;
    unsigned long size = 0;
    jpeg_mem_dest(&cinfo, &buffer, &size);
    cinfo.image_width = width;
    cinfo.image_height = height;
    cinfo.input_components = 1;
    cinfo.in_color_space = JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, 95, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = const_cast<unsigned char*>(&grey[cinfo.next_scanline * width]);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    std::vector<unsigned char> out(buffer, buffer + size);
    jpeg_destroy_compress(&cinfo);
    free(buffer);
    return out;
}

std::vector<unsigned char> jpeg_decode(const std::vector<unsigned char>& jpeg, int* width, int* height) {
    jpeg_decompress_struct cinfo;
    jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, jpeg.data(), jpeg.size());
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) throw std::runtime_error("not a JPEG");
    cinfo.out_color_space = JCS_GRAYSCALE;
    jpeg_start_decompress(&cinfo);
    *width = cinfo.output_width;
    *height = cinfo.output_height;
    std::vector<unsigned char> pixels(static_cast<size_t>(*width) * *height);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = &pixels[cinfo.output_scanline * *width];
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return pixels;
}

std::vector<unsigned char> resize(const std::vector<unsigned char>& grey, int width, int height,
                                  int new_width, int new_height) {
    cv::Mat src(height, width, CV_8UC1, const_cast<unsigned char*>(grey.data()));
    cv::Mat dst;
    cv::resize(src, dst, cv::Size(new_width, new_height), 0, 0, cv::INTER_LINEAR);
    return std::vector<unsigned char>(dst.data, dst.data + dst.total());
}

}  // namespace backend
