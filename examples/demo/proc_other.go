//go:build !linux

package main

import "syscall"

// dieWithParent has no parent-death signal to ask for outside Linux; the
// demo's clean-up stops its QEMU.
func dieWithParent() *syscall.SysProcAttr { return nil }
