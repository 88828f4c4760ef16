package qemuimg

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes qemu-img get SIGKILL when the process that ran it
// dies. Left running, a qemu-img of a killed process keeps writing (it
// recreates an overlay file by its path, say) while the next process
// settles the files the killed one left: the settling would remove a
// file the orphan then writes again, named by nothing.
//
// Linux sends the signal when the thread that started the child exits.
// Go's runtime keeps its threads, except one a goroutine locked with
// runtime.LockOSThread and left locked when it ended: a program that does
// that while vmsnap runs qemu-img on the same thread would see that
// qemu-img killed (an operation error, settled by the next Reconcile).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
