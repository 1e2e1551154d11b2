/* Test-only stand-in (see ../header_layout.rs). */
/* stand-in: CUPTI headers include it only for CUDA runtime types unused by activity records */
typedef int cudaError_t; typedef struct CUstream_st *cudaStream_t;
