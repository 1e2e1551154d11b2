/* Minimal stand-in for cuda.h: only the opaque handle and enum types the CUPTI activity
   headers name. Every one is a pointer or an int-sized enum, so record layouts are exact. */
#ifndef GPUSPAN_STUB_CUDA_H
#define GPUSPAN_STUB_CUDA_H
#include <stdint.h>
#include <stddef.h>
#define CUDA_VERSION 12090
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUfunc_st *CUfunction;
typedef struct CUmod_st *CUmodule;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUaccessPolicyWindow_st CUaccessPolicyWindow;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;
typedef struct CUuuid_st { char bytes[16]; } CUuuid;
typedef struct CUlaunchConfig_st CUlaunchConfig;
typedef int CUgraphNodeType;
typedef int CUstreamAttrID;
typedef union CUstreamAttrValue_u { void *p; unsigned long long v[8]; } CUstreamAttrValue;
#endif
