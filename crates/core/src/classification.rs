//! The classification extension: an output requested with `classification: k`
//! comes back as BYTES `"<value>:<index>[:<label>]"`, top k per batch item,
//! as Triton formats it.

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::tensor::{join_bytes_elements, to_f64, Tensor};

fn format_value(datatype: DataType, v: f64) -> String {
    match datatype {
        DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64 => format!("{v:.6}"),
        _ => format!("{}", v as i128),
    }
}

/// Replaces `output` by its top-`k` classes per batch item.
pub fn classify(output: &Tensor, batched: bool, k: usize, labels: Option<&[String]>) -> Result<Tensor> {
    if k == 0 {
        return Err(Error::invalid(format!("output '{}': classification count must be > 0", output.name)));
    }
    let values = to_f64(output.datatype, &output.data).map_err(|_| {
        Error::invalid(format!("output '{}': classification needs a numeric output, not BYTES", output.name))
    })?;
    let batch = if batched { output.shape.first().copied().unwrap_or(1).max(0) as usize } else { 1 };
    let per_item = values.len().checked_div(batch).unwrap_or(0);
    let k = k.min(per_item);
    let mut strings = Vec::with_capacity(batch * k);
    for item in 0..batch {
        let row = &values[item * per_item..(item + 1) * per_item];
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|a, b| row[*b].partial_cmp(&row[*a]).unwrap_or(std::cmp::Ordering::Equal));
        for &i in idx.iter().take(k) {
            let mut s = format!("{}:{}", format_value(output.datatype, row[i]), i);
            if let Some(label) = labels.and_then(|l| l.get(i)) {
                s.push(':');
                s.push_str(label);
            }
            strings.push(s);
        }
    }
    let shape = if batched { vec![batch as i64, k as i64] } else { vec![k as i64] };
    let data = join_bytes_elements(strings.iter().map(|s| s.as_bytes()));
    Ok(Tensor::new(output.name.clone(), DataType::Bytes, shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::split_bytes_elements;

    #[test]
    fn top_k_with_labels() {
        let vals: Vec<u8> = [0.1f32, 0.7, 0.2, 0.9, 0.05, 0.05].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::new("p", DataType::F32, vec![2, 3], vals);
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let out = classify(&t, true, 2, Some(&labels)).unwrap();
        assert_eq!(out.shape, vec![2, 2]);
        let parts = split_bytes_elements(&out.data, "p").unwrap();
        assert_eq!(parts[0], b"0.700000:1:b");
        assert_eq!(parts[1], b"0.200000:2:c");
        assert_eq!(parts[2], b"0.900000:0:a");
    }

    #[test]
    fn integers_print_without_decimals() {
        let vals: Vec<u8> = [3i32, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::new("o", DataType::I32, vec![3], vals);
        let out = classify(&t, false, 1, None).unwrap();
        assert_eq!(split_bytes_elements(&out.data, "o").unwrap(), vec![&b"7:2"[..]]);
    }
}
