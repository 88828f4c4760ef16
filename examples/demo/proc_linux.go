package main

import "syscall"

// dieWithParent makes the demo's QEMU die with the demo (Linux's
// parent-death signal), so an interrupted demo leaves no guest behind.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
