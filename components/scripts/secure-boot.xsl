<?xml version="1.0"?>
<!-- The VM's domain XML as the libvirt provider renders it, with UEFI Secure Boot switched on: the provider
     writes the OVMF loader with secure="no" and has no field for it, and QEMU's Secure Boot firmware
     needs System Management Mode, which the provider cannot declare either. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" omit-xml-declaration="yes" indent="yes"/>
  <xsl:template match="@*|node()">
    <xsl:copy><xsl:apply-templates select="@*|node()"/></xsl:copy>
  </xsl:template>
  <xsl:template match="/domain/os/loader/@secure">
    <xsl:attribute name="secure">yes</xsl:attribute>
  </xsl:template>
  <xsl:template match="/domain/features">
    <xsl:copy>
      <xsl:apply-templates select="@*|node()[not(self::smm)]"/>
      <smm state="on"/>
    </xsl:copy>
  </xsl:template>
</xsl:stylesheet>
