// Package attack holds native helpers for the sandbox's attacker-side tests:
// things Go cannot do directly (an i386 system call, a raw pthread bomb).
// Only tests import it; it is never linked into the cordon binary.
package attack

/*
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

static void *sleeper(void *arg) { (void)arg; for (;;) sleep(1000); return 0; }

// thread_bomb creates threads until the kernel refuses; returns how many
// were created and the errno of the refusal.
static int thread_bomb(int max, int *err) {
	int n = 0;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 64 * 1024);
	for (; n < max; n++) {
		pthread_t t;
		int e = pthread_create(&t, &a, sleeper, 0);
		if (e != 0) { *err = e; return n; }
	}
	*err = 0;
	return n;
}

// int80 makes a system call through the i386 ABI (int $0x80).
static long int80(long nr) {
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr) : "memory");
	return ret;
}
*/
import "C"

import "syscall"

// ThreadBomb creates up to max sleeping threads and reports how many it
// created before the kernel refused, and why.
func ThreadBomb(max int) (int, syscall.Errno) {
	var e C.int
	n := C.thread_bomb(C.int(max), &e)
	return int(n), syscall.Errno(e)
}

// Int80 makes an i386 system call (number nr in the i386 table).
func Int80(nr int) int { return int(C.int80(C.long(nr))) }
