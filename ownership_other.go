//go:build !unix

package vmsnap

import "fmt"

// fileID cannot identify files on this platform: no file can be proven
// the domain's own, so none is removed.
func fileID(path string) (dev, ino uint64, err error) {
	return 0, 0, fmt.Errorf("%w: file identity on this platform", ErrUnsupported)
}

func checkOwnFile(path string, private bool) error {
	return fmt.Errorf("%w: file ownership on this platform", ErrUnsupported)
}
