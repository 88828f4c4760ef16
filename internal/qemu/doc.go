// Package qemu is vmsnap's typed layer of QMP commands: one function per
// thing vmsnap asks of a running QEMU (read its block devices, snapshot
// disks in a transaction, run a job to its end, stop and resume the guest,
// save, load and delete the VM state), over the qmp.Monitor transport.
//
// It holds no policy: it does not choose disks, decide which snapshot
// kind to take, roll back, or write records. It does hold the facts about
// QEMU that every caller would otherwise relearn: which reply fields mean
// what, which errors mean "already done", that QEMU's snapshot jobs cannot
// be interrupted, and the one place where QEMU 6.0's snapshot jobs and the
// older HMP savevm/loadvm/delvm are chosen between (VMState).
//
// Every QMP command vmsnap sends for these purposes is named in this
// package, so that a version difference has one place to go.
package qemu
