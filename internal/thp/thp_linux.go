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
// are all present, from /proc/pid/pagemap (bit 63 of each 8-byte entry).
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
			full = binary.LittleEndian.Uint64(buf[8*i:])&(1<<63) != 0
		}
		if full {
			out = append(out, b)
		}
	}
	return out, nil
}
