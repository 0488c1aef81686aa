package redirect

//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror" -type ambit_addr -type ambit_origin_key -type ambit_origin -type ambit_lpm_key -type ambit_pod -type ambit_port -type ambit_limit capture ../../bpf/capture.c -- -I../../bpf -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror" -type ambit_addr -type ambit_hop_key -type ambit_hop_bytes -type ambit_hop -type ambit_hop_stat hop ../../bpf/hop.c -- -I../../bpf -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
