package migrate

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openDirect opens the file f is open on again, with O_DIRECT and access
// (os.O_RDONLY or os.O_WRONLY), through /proc/self/fd so the same file is
// opened whatever became of its path. It fails where the file system does
// not take O_DIRECT.
func openDirect(f *os.File, access int) (*os.File, error) {
	return os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), access|unix.O_DIRECT, 0)
}
