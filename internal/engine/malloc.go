package engine

/*
#include <malloc.h>

// cordon_fix_mmap_threshold stops glibc from raising its mmap threshold.
// By default, freeing a large mmap'ed block raises the threshold to that
// block's size, so later blocks of that size come from the malloc arenas
// instead, and an arena gives freed memory back to the kernel only from its
// top. The engine's large, long-lived blocks (compiled code and data of a
// module) then stay resident after the module is freed: 12 modules of 16 MiB
// installed and deleted left the host 60–80 MiB larger. With a fixed
// threshold every block of 128 KiB or more is its own mapping, unmapped when
// freed.
static void cordon_fix_mmap_threshold(void) {
#ifdef M_MMAP_THRESHOLD
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}
*/
import "C"

func init() { C.cordon_fix_mmap_threshold() }
