//go:build !linux

package thp

// Collapse is not supported outside Linux.
func Collapse(pid int, minSize uint64) (Result, error) { return Result{}, ErrUnsupported }
