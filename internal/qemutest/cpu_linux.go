package qemutest

import (
	"syscall"
	"testing"
	"time"
)

// ProcessCPU returns the CPU time (user and system, every thread, the
// garbage collector included) the process has used so far: a benchmark
// reports its difference per operation, which shows the cost when the
// wall time of a shared machine is inflated by other load.
func ProcessCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
