//go:build !linux

package qmp_test

import "syscall"

// dieWithTest returns nil: only Linux can make a child die with its
// parent; the tests' cleanups kill it.
func dieWithTest() *syscall.SysProcAttr { return nil }
