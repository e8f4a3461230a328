"""What every backend shares, and the only package a backend may import besides ``hwq``:
exact integer products (``products``: the choice of float BLAS / int64 by a proven bound, the
int64 loop, code ranges), AVX-512 VNNI int8 products (``vnni``), AVX2 int16 products for CPUs
without VNNI (``avx2``) and input handling (``plans``)."""
