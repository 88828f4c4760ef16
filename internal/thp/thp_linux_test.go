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

// presentPages counts the pages of mem that /proc/self/pagemap reports
// present.
func presentPages(t *testing.T, mem []byte) int {
	t.Helper()
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	buf := make([]byte, 8*(len(mem)/pageSize))
	if _, err := pm.ReadAt(buf, int64(addrOf(mem)/pageSize*8)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := 0; i < len(buf); i += 8 {
		if buf[i+7]&0x80 != 0 {
			n++
		}
	}
	return n
}

// Prefault maps every page of a mapping that was only partly touched,
// reading only those that were not present, without changing what they
// hold; a second call finds nothing to do.
func TestPrefault(t *testing.T) {
	const size = 40 << 20 // no mapping of the Go runtime has this size
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	unix.Madvise(mem, unix.MADV_NOHUGEPAGE) // 4 KiB pages: the count below is exact
	for i := 0; i < size/2; i += pageSize {
		mem[i] = 1
	}
	touched := presentPages(t, mem)
	if touched != size/2/pageSize {
		t.Fatalf("%d pages present after touching %d", touched, size/2/pageSize)
	}
	n, err := Prefault(os.Getpid(), size)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("not allowed here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := size/pageSize - touched; n != want {
		t.Errorf("Prefault read %d pages, want the %d untouched ones", n, want)
	}
	if got := presentPages(t, mem); got != size/pageSize {
		t.Errorf("%d of %d pages present after Prefault", got, size/pageSize)
	}
	for i := size / 2; i < size; i += pageSize {
		if mem[i] != 0 {
			t.Fatalf("byte %d is %d after Prefault", i, mem[i])
		}
	}
	if n, err := Prefault(os.Getpid(), size); err != nil || n != 0 {
		t.Errorf("second Prefault read %d pages (%v), want 0", n, err)
	}
}
