package qemutest

import "syscall"

// sysProcAttr makes the kernel kill QEMU when the test process dies, so an
// interrupted test run leaves no QEMU behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
