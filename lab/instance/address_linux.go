package instance

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
)

// label marks the loopback address as this instance's (ip addr shows it).
func (i Instance) label() string { return fmt.Sprintf("lo:meshvm%d", i.N) }

// AddIstiodIP puts IstiodIP on the host's loopback: VMs reach it through
// their default route (the host), whatever their own address.
func (i Instance) AddIstiodIP() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: i.IstiodIP(), Mask: net.CIDRMask(32, 32)}, Label: i.label()}
	if err := netlink.AddrReplace(lo, addr); err != nil {
		return fmt.Errorf("add %s to lo: %w", i.IstiodIP(), err)
	}
	return nil
}

// RemoveIstiodIP takes IstiodIP off the loopback (at down).
func (i Instance) RemoveIstiodIP() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: i.IstiodIP(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrDel(lo, addr); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from lo: %w", i.IstiodIP(), err)
	}
	return nil
}
