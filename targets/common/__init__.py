"""What every backend shares, and the only package a backend may import besides ``hwq``:
exact integer products (``products``: the choice of float BLAS / int64 by a proven bound, the
int64 loop, code ranges), AVX-512 VNNI int8 products (``vnni``) and input handling (``plans``)."""
