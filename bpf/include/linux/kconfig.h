/* SPDX-License-Identifier: GPL-2.0 */
/* socketrace stand-in: BCC needs this to enable its BPF helper declarations. */
#define CONFIG_BPF_SYSCALL 1
