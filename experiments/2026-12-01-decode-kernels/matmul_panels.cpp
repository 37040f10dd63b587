// y = x @ W for the 32 linear layers of the bench model (8 x: 512x1536, 512x512, 512x2752, 1376x512;
// 101 MB, beyond the caches) at M rows, the way kernels/small_matmul.cpp computes it, with W plain
// row-major [K, N] or packed in column panels of 32. Build and run:
//   g++ -O3 -march=native -std=c++17 -pthread matmul_panels.cpp -o /tmp/mp
//   for m in 1 4 8 16 32; do /tmp/mp $m 2 0; /tmp/mp $m 2 1; done     # rows, threads, packed
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>
#include <algorithm>
typedef float F16 __attribute__((vector_size(64)));
static inline F16 Ld(const float*p){F16 v; memcpy(&v,p,64); return v;}
static inline void St(float*p,F16 v){memcpy(p,&v,64);}
// y[M,N] = x[M,K] @ w[K,N]; columns [n0,n1), multiple of 32 assumed here
static bool packed = false;  // W in column panels of 32 ([N/32][K][32]) or plain row-major [K][N]
template<int MR>
static void Tile(const float*x,const float*w,float*y,int64_t K,int64_t N,int64_t n){
  F16 a[MR][2]={};
  for(int64_t k=0;k<K;k++){
    const float*wr=packed ? w+n*K+k*32 : w+k*N+n; F16 w0=Ld(wr), w1=Ld(wr+16);
    for(int r=0;r<MR;r++){ F16 xv=F16{}+x[r*K+k]; a[r][0]+=xv*w0; a[r][1]+=xv*w1; }
  }
  for(int r=0;r<MR;r++){St(y+r*N+n,a[r][0]);St(y+r*N+n+16,a[r][1]);}
}
static void Gemm(const float*x,const float*w,float*y,int64_t M,int64_t K,int64_t N,int64_t n0,int64_t n1){
  for(int64_t n=n0;n<n1;n+=32){
    int64_t m=0;
    for(;m+4<=M;m+=4) Tile<4>(x+m*K,w,y+m*N,K,N,n);
    for(;m<M;m++) Tile<1>(x+m*K,w,y+m*N,K,N,n);
  }
}
int main(int argc,char**argv){
  int M=atoi(argv[1]); int T=atoi(argv[2]); packed=atoi(argv[3]);
  struct S{int64_t K,N;}; std::vector<S> sh; for(int l=0;l<8;l++){sh.push_back({512,1536});sh.push_back({512,512});sh.push_back({512,2752});sh.push_back({1376,512});}
  std::vector<std::vector<float>> ws; size_t bytes=0; std::mt19937 rng(1);
  for(auto s:sh){ws.emplace_back(s.K*s.N); for(auto&v:ws.back()) v=(rng()%1000)*1e-4f; bytes+=s.K*s.N*4;}
  std::vector<float> x(M*1376,0.01f), y(M*2752);
  double best=1e9;
  for(int it=0;it<20;it++){
    auto t0=std::chrono::steady_clock::now();
    for(size_t i=0;i<sh.size();i++){
      int64_t K=sh[i].K,N=sh[i].N; int64_t tiles=N/32;
      if(T==1) Gemm(x.data(),ws[i].data(),y.data(),M,K,N,0,N);
      else { std::thread h([&]{Gemm(x.data(),ws[i].data(),y.data(),M,K,N,(tiles/2)*32,N);}); Gemm(x.data(),ws[i].data(),y.data(),M,K,N,0,(tiles/2)*32); h.join(); }
    }
    best=std::min(best,std::chrono::duration<double,std::milli>(std::chrono::steady_clock::now()-t0).count());
  }
  printf("%s M=%d T=%d:", packed ? "panels" : "row-major", M, T); printf(" 32 matmuls %.2f ms -> %.1f GB/s, %.0f GFLOP/s\n",best,bytes/best/1e6, 2.0*M*bytes/4/best/1e6);
}
