package qemutest

// CounterAddr is the guest-physical address of the guest's 64-bit
// little-endian counter. It sits alone in its own 4 KiB page, away from the
// boot code at 0x7C00: under TCG every store into a page that holds
// translated code forces retranslation, which would slow the loop about a
// hundredfold.
const CounterAddr = 0x10000

// bootLoad is where the BIOS loads the boot sector.
const bootLoad = 0x7C00

// BootSector returns the 512-byte guest: hand-assembled 16-bit real-mode
// code that the BIOS loads at 0x7C00. It disables interrupts, sets up the
// stack and the data segment, zeroes the counter at CounterAddr, then loops
// forever on
//
//	add dword [counter], 1
//	adc dword [counter+4], 0
//
// so the counter is a 64-bit value that only ever grows while the guest
// runs and stops growing while it is paused. Every call returns a new slice.
func BootSector() []byte {
	seg := uint16(CounterAddr >> 4) // ds such that ds:0000 is CounterAddr
	code := []byte{
		// 0x00: cli — no interrupts: nothing but the loop ever runs.
		0xFA,
		// 0x01: xor ax, ax (31 /r, ModRM C0 = ax, ax).
		0x31, 0xC0,
		// 0x03: mov ss, ax (8E /r, ModRM D0: reg=ss, rm=ax).
		0x8E, 0xD0,
		// 0x05: mov sp, 0x7C00 (BC iw) — stack just below the code; the
		// loop never pushes, this only gives the CPU a sane stack.
		0xBC, byte(bootLoad & 0xFF), byte(bootLoad >> 8),
		// 0x08: mov ax, seg (B8 iw).
		0xB8, byte(seg), byte(seg >> 8),
		// 0x0B: mov ds, ax (8E /r, ModRM D8: reg=ds, rm=ax).
		0x8E, 0xD8,
		// 0x0D: xor eax, eax (66 prefix: 32-bit operand; 31 /r).
		0x66, 0x31, 0xC0,
		// 0x10: mov [0x0000], eax (66 A3 moffs16) — counter low dword = 0.
		0x66, 0xA3, 0x00, 0x00,
		// 0x14: mov [0x0004], eax (66 A3 moffs16) — counter high dword = 0.
		0x66, 0xA3, 0x04, 0x00,
		// 0x18 loop: add dword [0x0000], 1 (66 83 /0 ib; ModRM 06 =
		// mod 00, reg 000 (add), rm 110 (disp16); disp16 0000; imm8 01).
		0x66, 0x83, 0x06, 0x00, 0x00, 0x01,
		// 0x1E: adc dword [0x0004], 0 (66 83 /2 ib; ModRM 16 = mod 00,
		// reg 010 (adc), rm 110 (disp16); disp16 0004; imm8 00) — carries
		// into the high dword.
		0x66, 0x83, 0x16, 0x04, 0x00, 0x00,
		// 0x24: jmp short loop (EB rel8): next ip is 0x26, 0x18-0x26 = -14.
		0xEB, 0xF2,
	}
	sector := make([]byte, 512)
	copy(sector, code)
	// 0x1FE: the boot signature the BIOS checks before jumping to 0x7C00.
	sector[510], sector[511] = 0x55, 0xAA
	return sector
}
