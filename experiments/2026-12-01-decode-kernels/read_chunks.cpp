// Read bandwidth of an access pattern: sum 256 MB of floats taken in random-order chunks of CH
// bytes from a 1 GB array, T threads, optionally on transparent huge pages, optionally prefetching
// each line of a thread's next chunk while reading the same line of its current one. Build and run:
//   g++ -O3 -march=native -std=c++17 -pthread read_chunks.cpp -o /tmp/rc
//   for c in 4096 32768 65536 262144 1048576; do /tmp/rc $c 2 0; done; /tmp/rc 65536 1 0   # chunk, threads, huge
//   /tmp/rc 32768 2 0 1   # ... and prefetch (default 0)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>
#include <algorithm>
#include <sys/mman.h>
typedef float F16 __attribute__((vector_size(64)));
int main(int argc,char**argv){
  size_t total = size_t(1)<<30; int64_t ch = atoi(argv[1]); int T=atoi(argv[2]); int huge=atoi(argv[3]); int pf=argc>4?atoi(argv[4]):0;
  float* p=(float*)aligned_alloc(1<<21,total); if(huge) madvise(p,total,MADV_HUGEPAGE); memset(p,1,total);
  int64_t nch = total/ch; std::vector<int64_t> order(nch); for(int64_t i=0;i<nch;i++) order[i]=i;
  std::mt19937 rng(1); std::shuffle(order.begin(),order.end(),rng);
  int64_t use = std::min<int64_t>(nch, (256<<20)/ch); // read 256 MB per trial
  double best=1e9; volatile float sink;
  for(int it=0;it<8;it++){
    auto t0=std::chrono::steady_clock::now();
    std::vector<std::thread> th; std::vector<float> res(T);
    for(int t=0;t<T;t++) th.emplace_back([&,t]{ F16 a{},b{},c{},d{}; for(int64_t i=t;i<use;i+=T){ const float* q=p+order[i]*ch/4; const float* nq=p+order[std::min<int64_t>(i+T,use-1)]*ch/4; for(int64_t j=0;j<ch/4;j+=64){ if(pf) for(int l=0;l<64;l+=16) __builtin_prefetch(nq+j+l);F16 x,y,z,w; memcpy(&x,q+j,64);memcpy(&y,q+j+16,64);memcpy(&z,q+j+32,64);memcpy(&w,q+j+48,64); a+=x;b+=y;c+=z;d+=w;} } F16 s=a+b+c+d; res[t]=s[0]; });
    for(auto&x:th) x.join();
    double ms=std::chrono::duration<double,std::milli>(std::chrono::steady_clock::now()-t0).count(); best=std::min(best,ms); sink=res[0];
  }
  printf("chunk %6ld B threads %d huge %d prefetch %d: %.1f GB/s\n", ch, T, huge, pf, use*ch/best/1e6);
}
