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
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
