package thp

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// hugeKiB returns AnonHugePages of the mapping that starts at addr in this
// process, from /proc/self/smaps.
func hugeKiB(t *testing.T, addr uintptr) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = strings.HasPrefix(f[0], fmt.Sprintf("%x-", addr))
			continue
		}
		if f := strings.Fields(l); in && len(f) == 3 && f[0] == "AnonHugePages:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatalf("no mapping at %#x in smaps", addr)
	return 0
}

// A mapping whose huge pages were split (as userfaultfd write protection
// splits QEMU's guest RAM) is collapsed back; a block with a page never
// touched is left alone, so nothing new is made resident.
func TestCollapseSplitMapping(t *testing.T) {
	const size = 64 << 20
	// 2 MiB more, to align the start.
	mem, err := unix.Mmap(-1, 0, size+blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
		t.Skipf("MADV_HUGEPAGE: %v", err)
	}
	for i := 0; i < len(mem); i += pageSize {
		mem[i] = 1
	}
	base := addrOf(mem)
	aligned := (base + blockSize - 1) &^ (blockSize - 1)
	// Split every huge page: make one 4 KiB page of each block read-only.
	for b := aligned; b+blockSize <= base+uintptr(len(mem)); b += blockSize {
		off := int(b - base)
		if err := unix.Mprotect(mem[off:off+pageSize], unix.PROT_READ); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mprotect(mem[off:off+pageSize], unix.PROT_READ|unix.PROT_WRITE); err != nil {
			t.Fatal(err)
		}
	}
	// A hole: one page of the last whole block dropped.
	lastBlock := int(((base+uintptr(len(mem)))&^(blockSize-1))-blockSize-base) + 8*pageSize
	if err := unix.Madvise(mem[lastBlock:lastBlock+pageSize], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	before := hugeKiB(t, base)
	res, err := Collapse(os.Getpid(), size)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("not allowed here (Linux ≥ 6.1 and CAP_SYS_NICE): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	after := hugeKiB(t, base)
	t.Logf("AnonHugePages %d KiB -> %d KiB; %+v", before, after, res)
	aligned2 := 0
	for b := aligned; b+blockSize <= base+uintptr(len(mem)); b += blockSize {
		aligned2++
	}
	if want := aligned2 - 1; res.Blocks != want { // all but the one with a hole
		t.Errorf("asked for %d blocks, want %d (the block with a hole left out)", res.Blocks, want)
	}
	if after < before+(res.Blocks-res.Failed-2)*2048 || after <= before {
		t.Errorf("AnonHugePages %d KiB -> %d KiB after collapsing %+v", before, after, res)
	}
	if mem[lastBlock] != 0 {
		t.Error("the hole was filled by the collapse")
	}
	for i := 0; i < len(mem); i += pageSize {
		if i != lastBlock && mem[i] != 1 {
			t.Fatalf("byte %d changed to %d", i, mem[i])
		}
	}
}
