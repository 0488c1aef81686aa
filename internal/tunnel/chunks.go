package tunnel

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Receive chunks: the buffers a stream's received DATA waits in until its
// consumer takes it. They come in size classes, powers of two from 4 KiB
// to a maximal frame (1 MiB), and a frame's payload is read into the
// smallest class that holds it, so that the memory a stream holds follows
// the bytes it has received: at most about twice those, plus one 4 KiB
// chunk. (A single class of maximal frames made each 5 KiB frame held for
// a slow target cost 1 MiB.) Each class is pooled, as pointers to the
// chunk's first byte: putting one back allocates nothing.
const (
	chunkMinShift = 12 // 4 KiB
	chunkMaxShift = 20 // maxFrameSize
	chunkClasses  = chunkMaxShift - chunkMinShift + 1
)

var chunkPools [chunkClasses]sync.Pool

// chunkClass is the class of the smallest chunk that holds n bytes.
func chunkClass(n int) int {
	if n <= 1<<chunkMinShift {
		return 0
	}
	return bits.Len(uint(n-1)) - chunkMinShift
}

// getChunk returns a pooled chunk of length n (at most maxFrameSize), its
// capacity that of its class.
func getChunk(n int) []byte {
	k := chunkClass(n)
	size := 1 << (chunkMinShift + k)
	if p, _ := chunkPools[k].Get().(*byte); p != nil {
		return unsafe.Slice(p, size)[:n]
	}
	return make([]byte, n, size)
}

// putChunk returns b to its class's pool. A slice whose capacity is no
// class's (a chunk partly consumed from its front) is left to the garbage
// collector.
func putChunk(b []byte) {
	c := cap(b)
	if c < 1<<chunkMinShift || c > 1<<chunkMaxShift || c&(c-1) != 0 {
		return
	}
	chunkPools[bits.Len(uint(c))-1-chunkMinShift].Put(unsafe.SliceData(b))
}
