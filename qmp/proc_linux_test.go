package qmp_test

import "syscall"

// dieWithTest makes a child process die with the test process.
func dieWithTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
