// Package thp prepares a QEMU's guest RAM for the guest pause of a
// background snapshot: Collapse puts it back in transparent huge pages,
// Prefault makes every page of it present.
//
// A background-snapshot migration write-protects guest RAM with
// userfaultfd, and the kernel splits the huge pages it protects into 4 KiB
// pages; it merges them again only slowly (khugepaged). QEMU's next
// background snapshot reads one byte of every page while the guest is
// stopped, which costs 1–2 ms over huge pages and 10–25 ms over 4 KiB
// pages for a 256 MiB guest: the guest pause of every live snapshot after
// a QEMU process's first. Collapse asks the kernel (process_madvise with
// MADV_COLLAPSE, Linux ≥ 6.1, CAP_SYS_NICE) to merge them back, before
// the guest is stopped.
//
// That read also faults in every page the guest never touched, and on a
// host that is itself a VM handing free memory back to its hypervisor, a
// first touch is slow: 230–480 ms of a 256 MiB guest's first background
// snapshot pause went there (against 15–19 ms for the later ones).
// Prefault takes those faults from outside (reading /proc/pid/mem), before
// the guest is stopped: the same pages, mapped the same way, as QEMU's
// read would.
package thp

import "errors"

// ErrUnsupported is returned where the kernel or the caller's privileges
// do not allow collapsing or reading another process's memory.
var ErrUnsupported = errors.New("thp: collapsing or reading another process's memory is not supported here")

// Result says what Collapse did.
type Result struct {
	// Blocks is the number of 2 MiB blocks asked to be collapsed.
	Blocks int
	// Failed is how many of them the kernel did not collapse.
	Failed int
}
