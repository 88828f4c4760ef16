package thp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	pageSize  = 4096
	blockSize = 2 << 20
	perBlock  = blockSize / pageSize
	// madvCollapse is MADV_COLLAPSE (Linux 6.1).
	madvCollapse = 25
	// batch bounds the ranges given to one process_madvise (IOV_MAX).
	batch = 1024
)

// Collapse asks the kernel to put back in huge pages the 2 MiB blocks of
// process pid's private anonymous read-write mappings of at least minSize
// bytes (the guest RAM: give the RAM size) whose 4 KiB pages are all
// present. Blocks with a page missing are left alone, so the process's
// resident memory does not grow (collapsing fills holes). It returns
// ErrUnsupported where the kernel or privileges do not allow it; a block
// the kernel refuses (EINVAL, EAGAIN, ENOMEM) only counts as Failed.
func Collapse(pid int, minSize uint64) (Result, error) {
	var res Result
	ranges, err := anonRanges(pid, minSize)
	if err != nil {
		return res, err
	}
	if len(ranges) == 0 {
		return res, nil
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer pm.Close()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return res, fmt.Errorf("%w: pidfd_open: %w", ErrUnsupported, err)
	}
	defer unix.Close(pidfd)
	var blocks []uint64
	for _, r := range ranges {
		b, err := fullBlocks(pm, r[0], r[1])
		if err != nil {
			return res, err
		}
		blocks = append(blocks, b...)
	}
	res.Blocks = len(blocks)
	for len(blocks) > 0 {
		n := min(len(blocks), batch)
		failed, err := collapse(pidfd, blocks[:n])
		res.Failed += failed
		if err != nil {
			return res, err
		}
		blocks = blocks[n:]
	}
	return res, nil
}

// collapse asks for blocks; a refused batch is retried block by block,
// since the kernel stops at the first block it cannot collapse.
func collapse(pidfd int, blocks []uint64) (failed int, err error) {
	if e := madvise(pidfd, blocks); e == nil {
		return 0, nil
	} else if errors.Is(e, unix.EPERM) || errors.Is(e, unix.ENOSYS) || errors.Is(e, unix.ESRCH) {
		return len(blocks), fmt.Errorf("%w: process_madvise: %w", ErrUnsupported, e)
	}
	for _, b := range blocks {
		if e := madvise(pidfd, []uint64{b}); e != nil {
			failed++
		}
	}
	return failed, nil
}

func madvise(pidfd int, blocks []uint64) error {
	// struct iovec {void *base; size_t len}: two words. The addresses are
	// in the other process, never dereferenced here, so they stay plain
	// integers.
	iov := make([]uintptr, 0, 2*len(blocks))
	for _, b := range blocks {
		iov = append(iov, uintptr(b), blockSize)
	}
	_, _, e := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(blocks)), madvCollapse, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// anonRanges returns pid's private anonymous read-write mappings of at
// least minSize bytes, from /proc/pid/maps.
func anonRanges(pid int, minSize uint64) ([][2]uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer f.Close()
	var out [][2]uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "start-end perms offset dev inode [path]"
		fl := strings.Fields(sc.Text())
		if len(fl) != 5 || fl[1] != "rw-p" || fl[4] != "0" {
			continue
		}
		lo, hi, ok := strings.Cut(fl[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || b < a || b-a < minSize {
			continue
		}
		out = append(out, [2]uint64{a, b})
	}
	return out, sc.Err()
}

// fullBlocks returns the 2 MiB-aligned blocks of [start, end) whose pages
// are all present and private to the process, from /proc/pid/pagemap.
func fullBlocks(pm io.ReaderAt, start, end uint64) ([]uint64, error) {
	first := (start + blockSize - 1) &^ (blockSize - 1)
	buf := make([]byte, 8*perBlock)
	var out []uint64
	for b := first; b+blockSize <= end; b += blockSize {
		if _, err := pm.ReadAt(buf, int64(b/pageSize*8)); err != nil {
			return nil, fmt.Errorf("read pagemap: %w", err)
		}
		full := true
		for i := 0; i < perBlock && full; i++ {
			// Present (bit 63) and mapped only here (bit 56): not the
			// kernel's zero page, which Prefault maps into holes, and
			// which a collapse would replace with new memory.
			const want = 1<<63 | 1<<56
			full = binary.LittleEndian.Uint64(buf[8*i:])&want == want
		}
		if full {
			out = append(out, b)
		}
	}
	return out, nil
}

// Prefault makes every page of process pid's guest RAM (its private
// anonymous read-write mappings of size bytes, or up to 2 MiB more)
// present, by
// reading each run of pages that are not through /proc/pid/mem: the same
// read fault QEMU's first background snapshot takes on them while the
// guest is stopped (mapping the kernel's zero page, or new memory where
// the kernel does not use it for such faults, as this project's kernel
// does not), taken before the guest is stopped. On hosts where a first
// touch is slow (memory handed back to the hypervisor) that read is most
// of the first pause. It returns the number of pages it read, and
// ErrUnsupported where the caller may not read the process's memory.
func Prefault(pid int, size uint64) (int, error) {
	all, err := anonRanges(pid, size)
	if err != nil {
		return 0, err
	}
	// Only the guest RAM: a mapping of its size (QEMU may round it up to
	// a huge page), not every large one, whose untouched pages may never
	// be meant to be.
	var ranges [][2]uint64
	for _, r := range all {
		if r[1]-r[0] <= size+blockSize {
			ranges = append(ranges, r)
		}
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer pm.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer mem.Close()
	var (
		pages int
		buf   = make([]byte, 8*perBlock)
		sink  = make([]byte, blockSize)
	)
	read := func(from, to uint64) error {
		if _, err := mem.ReadAt(sink[:to-from], int64(from)); err != nil {
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				return fmt.Errorf("%w: %w", ErrUnsupported, err)
			}
			return err
		}
		pages += int((to - from) / pageSize)
		return nil
	}
	for _, r := range ranges {
		for a := r[0]; a < r[1]; a += blockSize {
			end := min(a+blockSize, r[1])
			b := buf[:8*((end-a)/pageSize)]
			if _, err := pm.ReadAt(b, int64(a/pageSize*8)); err != nil {
				return pages, fmt.Errorf("read pagemap: %w", err)
			}
			// Runs of pages neither present (bit 63) nor swapped (bit
			// 62: reading would swap it in, the kernel's business).
			run := uint64(0)
			for i := 0; i <= len(b); i += 8 {
				at := a + uint64(i/8)*pageSize
				if i < len(b) && binary.LittleEndian.Uint64(b[i:])&(3<<62) == 0 {
					if run == 0 {
						run = at
					}
					continue
				}
				if run != 0 {
					if err := read(run, at); err != nil {
						return pages, err
					}
					run = 0
				}
			}
		}
	}
	return pages, nil
}
