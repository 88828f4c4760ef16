package store

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uring is a minimal io_uring instance, used by one goroutine at a time:
// List hands the kernel a batch of opens, stats, reads or closes in one
// system call instead of one call each. On this project's machines a
// system call costs about a microsecond before it does any work, and a
// record file needed four.
//
// The memory an operation names (a path, a stat buffer, a read buffer)
// must stay alive and unmoved until its completion has been reaped:
// callers pass heap memory they keep, and wait for every completion of a
// submission before they reuse or drop it.
type uring struct {
	fd              int
	rings, sqesMem  []byte
	sqHead, sqTail  *uint32
	sqMask          uint32
	sqArray         []uint32
	sqes            []uringSQE
	cqHead, cqTail  *uint32
	cqMask          uint32
	cqes            []uringCQE
	queued, entries uint32
}

// uringSQE is struct io_uring_sqe.
type uringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64 // also addr2: the statx buffer
	addr     uint64
	len      uint32
	opFlags  uint32 // open_flags, statx_flags, rw_flags
	userData uint64
	bufIndex uint16
	pers     uint16
	fileIdx  uint32
	addr3    uint64
	_        uint64
}

// uringCQE is struct io_uring_cqe.
type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	_                                                                      [3]uint32
	sqOff                                                                  struct {
		head, tail, mask, entries, flags, dropped, array, _ uint32
		_                                                   uint64
	}
	cqOff struct {
		head, tail, mask, entries, overflow, cqes, flags, _ uint32
		_                                                   uint64
	}
}

const (
	uringOpOpenat = 18
	uringOpClose  = 19
	uringOpStatx  = 21
	uringOpRead   = 22

	uringHardlink    = 1 << 3 // IOSQE_IO_HARDLINK: the next runs even if this fails
	uringGetEvents   = 1      // IORING_ENTER_GETEVENTS
	uringOffSQEs     = 0x10000000
	uringRegProbe    = 8 // IORING_REGISTER_PROBE
	uringOpSupported = 1 // IO_URING_OP_SUPPORTED
)

// The rings List uses are kept for the life of the process, at most
// maxRings of them (each holds a descriptor and about 24 KiB of memory
// shared with the kernel): setting one up costs more than reading a few
// dozen files, and the cap bounds the files a process's listings hold open
// at once (maxRings × ringRound). A reader that finds none free makes its
// system calls one by one.
const maxRings = 4

var (
	ringPool = make(chan *uring, maxRings)
	uringMu  sync.Mutex
	// uringUsable is false once io_uring turned out unusable in this
	// process: no such system call, refused by a seccomp filter or by
	// kernel.io_uring_disabled, lacking an operation List needs, or an
	// io_uring_enter that failed. List then makes its system calls one by
	// one, as it always can.
	uringUsable = true
	rings       int // set up so far, at most maxRings
)

// acquireRing returns a free ring, setting one up if fewer than maxRings
// exist, or nil when none can be had now (all busy, or a passing shortage
// of descriptors or memory) or ever (uringUsable false).
func acquireRing() *uring {
	uringMu.Lock()
	defer uringMu.Unlock()
	if !uringUsable {
		return nil
	}
	select {
	case r := <-ringPool:
		return r
	default:
	}
	if !uringUsable || rings == maxRings {
		return nil
	}
	r, err := setupURing(ringEntries)
	if err == nil {
		if err = r.probe(uringOpOpenat, uringOpClose, uringOpStatx, uringOpRead); err != nil {
			r.close()
		}
	}
	switch {
	case err == nil:
		rings++
		return r
	case err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOMEM || err == unix.EAGAIN || err == unix.EINTR:
		return nil // try again another time
	default:
		uringUsable = false
		return nil
	}
}

// releaseRing gives a ring acquireRing returned back.
func releaseRing(r *uring) { ringPool <- r }

// disableURing stops every later use of io_uring (see submit).
func disableURing() {
	uringMu.Lock()
	uringUsable = false
	uringMu.Unlock()
}

func setupURing(entries uint32) (*uring, error) {
	var p uringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, e
	}
	r := &uring{fd: int(fd), entries: p.sqEntries}
	// One mapping holds both rings (IORING_FEAT_SINGLE_MMAP, Linux 5.4;
	// on older kernels the CQ offset is past the SQ ring's size and the
	// map fails, which makes the ring unusable).
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	const feature = 1 // IORING_FEAT_SINGLE_MMAP
	if p.features&feature == 0 {
		unix.Close(r.fd)
		return nil, unix.ENOSYS
	}
	var err error
	if r.rings, err = unix.Mmap(r.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		unix.Close(r.fd)
		return nil, err
	}
	if r.sqesMem, err = unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, err
	}
	at := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.rings[off])) }
	r.sqHead, r.sqTail, r.sqMask = at(p.sqOff.head), at(p.sqOff.tail), *at(p.sqOff.mask)
	r.sqArray = unsafe.Slice(at(p.sqOff.array), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqesMem[0])), p.sqEntries)
	r.cqHead, r.cqTail, r.cqMask = at(p.cqOff.head), at(p.cqOff.tail), *at(p.cqOff.mask)
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&r.rings[p.cqOff.cqes])), p.cqEntries)
	return r, nil
}

// probe fails unless the kernel supports every one of ops.
func (r *uring) probe(ops ...uint8) error {
	// struct io_uring_probe, then struct io_uring_probe_op[256].
	var buf [16 + 256*8]byte
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringRegProbe, uintptr(unsafe.Pointer(&buf[0])), 256, 0, 0); e != 0 {
		return e
	}
	for _, op := range ops {
		o := buf[16+int(op)*8:]
		if op > buf[0] || // last_op
			o[0] != op || binary.NativeEndian.Uint16(o[2:4])&uringOpSupported == 0 {
			return unix.EINVAL
		}
	}
	return nil
}

func (r *uring) close() {
	if r.sqesMem != nil {
		unix.Munmap(r.sqesMem)
	}
	if r.rings != nil {
		unix.Munmap(r.rings)
	}
	unix.Close(r.fd)
}

// room is the number of submissions that can still be queued.
func (r *uring) room() int { return int(r.entries - r.queued) }

// queue returns a zeroed submission to fill, queued for the next submit.
// The caller checks room first.
func (r *uring) queue() *uringSQE {
	i := (atomic.LoadUint32(r.sqTail) + r.queued) & r.sqMask
	r.sqArray[i] = i
	s := &r.sqes[i]
	*s = uringSQE{}
	r.queued++
	return s
}

// submit hands the queued submissions to the kernel and calls done with
// the user data and result of each of their completions (a result < 0 is
// -errno). It returns once all of them have completed. An error means the
// ring itself failed (the kernel refused io_uring_enter) with completions
// perhaps outstanding: the kernel may still write into the memory they
// name, so the caller gives that memory and the ring to abandon and
// uses neither again.
func (r *uring) submit(done func(userData uint64, res int32)) error {
	n := r.queued
	atomic.StoreUint32(r.sqTail, atomic.LoadUint32(r.sqTail)+n)
	r.queued = 0
	for got := uint32(0); got < n; {
		toSubmit := atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
		head, tail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
		if head == tail || toSubmit > 0 {
			_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(n-got), uringGetEvents, 0, 0)
			if e != 0 && e != unix.EINTR {
				return e
			}
			tail = atomic.LoadUint32(r.cqTail)
		}
		for ; head != tail; head++ {
			c := &r.cqes[head&r.cqMask]
			done(c.userData, c.res)
			got++
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	return nil
}

// abandoned keeps alive, for the life of the process, the rings whose
// io_uring_enter failed and the memory their submissions named: the kernel
// may complete those later, and must not write into memory reused since.
// It holds what at most one failure per ring left, since the first failure
// stops every later use of io_uring.
var abandoned struct {
	sync.Mutex
	kept []any
}

// abandon gives up r and the memory in keep (see submit), and stops every
// later use of io_uring in this process.
func abandon(r *uring, keep ...any) {
	disableURing()
	abandoned.Lock()
	abandoned.kept = append(abandoned.kept, r)
	abandoned.kept = append(abandoned.kept, keep...)
	abandoned.Unlock()
}
