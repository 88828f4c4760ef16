//go:build !linux

package qemutest

import "syscall"

// sysProcAttr returns nil: only Linux can tie QEMU's life to the test's.
func sysProcAttr() *syscall.SysProcAttr { return nil }
