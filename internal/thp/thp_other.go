//go:build !linux

package thp

// Collapse is not supported outside Linux.
func Collapse(pid int, minSize uint64) (Result, error) { return Result{}, ErrUnsupported }

// Prefault is not supported outside Linux.
func Prefault(pid int, size uint64) (int, error) { return 0, ErrUnsupported }
