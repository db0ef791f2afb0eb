//! The source model: an invoice exactly as the API sends it, with exact decimals.

use std::fmt::Write as _;

use rust_decimal::Decimal;

/// Field names of the API's JSON, as sent.
pub mod field {
    /// When the API created the record (local time without offset in the reference set).
    pub const CREATE_DATE: &str = "CreateDate";
    /// When the invoice was issued.
    pub const EMISSION_DATE: &str = "EmissionDate";
    /// Discount on the whole invoice.
    pub const DISCOUNT: &str = "Discount";
    /// Invoice number printed on the document.
    pub const NFE_NUMBER: &str = "NFeNumber";
    /// Invoice identifier (unique per invoice).
    pub const NFE_ID: &str = "NFeID";
    /// Items.
    pub const ITEM_LIST: &str = "ItemList";
    /// Item: product name.
    pub const PRODUCT_NAME: &str = "ProductName";
    /// Item: unit value.
    pub const VALUE: &str = "Value";
    /// Item: quantity.
    pub const QUANTITY: &str = "Quantity";
}

/// One invoice as sent by the API (`CreateDate`, `EmissionDate`, `Discount`, `NFeNumber`,
/// `NFeID`, `ItemList`). Strings are the decoded JSON strings, unchanged; decimals keep the
/// written scale (`9.00` stays `9.00`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInvoice {
    /// `CreateDate`, as written.
    pub create_date: String,
    /// `EmissionDate`, as written.
    pub emission_date: String,
    /// `Discount`.
    pub discount: Decimal,
    /// `NFeNumber`.
    pub nfe_number: i64,
    /// `NFeID`.
    pub nfe_id: i64,
    /// `ItemList`.
    pub item_list: Vec<SourceItem>,
}

/// One entry of `ItemList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceItem {
    /// `ProductName`, as written.
    pub product_name: String,
    /// `Value`: unit value.
    pub value: Decimal,
    /// `Quantity`: an exact decimal (integers in the reference set; fractions allowed, e.g. kg).
    pub quantity: Decimal,
}

impl SourceInvoice {
    /// Writes the record back as compact API JSON, numbers spelled exactly from the decimals.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(128 + 64 * self.item_list.len());
        s.push('{');
        push_member(&mut s, field::CREATE_DATE);
        push_str(&mut s, &self.create_date);
        s.push(',');
        push_member(&mut s, field::EMISSION_DATE);
        push_str(&mut s, &self.emission_date);
        s.push(',');
        push_member(&mut s, field::DISCOUNT);
        let _ = write!(s, "{}", self.discount);
        s.push(',');
        push_member(&mut s, field::NFE_NUMBER);
        let _ = write!(s, "{}", self.nfe_number);
        s.push(',');
        push_member(&mut s, field::NFE_ID);
        let _ = write!(s, "{}", self.nfe_id);
        s.push(',');
        push_member(&mut s, field::ITEM_LIST);
        s.push('[');
        for (i, item) in self.item_list.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('{');
            push_member(&mut s, field::PRODUCT_NAME);
            push_str(&mut s, &item.product_name);
            s.push(',');
            push_member(&mut s, field::VALUE);
            let _ = write!(s, "{}", item.value);
            s.push(',');
            push_member(&mut s, field::QUANTITY);
            let _ = write!(s, "{}", item.quantity);
            s.push('}');
        }
        s.push_str("]}");
        s
    }
}

fn push_member(s: &mut String, name: &str) {
    s.push('"');
    s.push_str(name);
    s.push_str("\":");
}

fn push_str(s: &mut String, v: &str) {
    match serde_json::to_string(v) {
        Ok(quoted) => s.push_str(&quoted),
        Err(_) => s.push_str("\"\""),
    }
}
